"""`bort convert` across .params, .pt, .safetensors and HF directories (no MXNet needed)."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytestmark = pytest.mark.torch

from bort_core import checkpoint as ckpt  # noqa: E402
from bort_core.cli import main  # noqa: E402
from bort_core.configs import get_config  # noqa: E402
from bort_core.convert import read_checkpoint  # noqa: E402
from bort_torch import model as tm  # noqa: E402
from parity.io import random_params  # noqa: E402


@pytest.fixture()
def source(tmp_path):
    config = get_config("bort_tiny")
    params = random_params(config, seed=5)
    path = str(tmp_path / "src.params")
    ckpt.save_params(path, params, store_tied_decoder=True)
    return path, params


def _equal(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_every_format_round_trips_bit_exact(tmp_path, source):
    path, params = source
    chain = [path, str(tmp_path / "a.pt"), str(tmp_path / "b.safetensors"), str(tmp_path / "hf"),
             str(tmp_path / "c.pt"), str(tmp_path / "d.params")]
    for src, dst in zip(chain, chain[1:]):
        assert main(["convert", src, dst, "--config", "bort_tiny"]) == 0
        config, back = read_checkpoint(dst, "bort_tiny")
        assert config.vocab_size == 4096 and _equal(dict(back), params), dst
    assert os.stat(chain[2]).st_mode & 0o044 == 0o044   # readable like any plain write


def test_pt_loads_straight_into_the_torch_model(tmp_path, source):
    path, params = source
    out = str(tmp_path / "m.pt")
    assert main(["convert", path, out, "--config", "bort_tiny"]) == 0
    model = tm.BortModel(get_config("bort_tiny"))
    model.load_state_dict(torch.load(out, weights_only=True))
    assert _equal(tm.get_params(model), params)
    assert model.decoder[3].weight is model.word_embed[0].weight


def test_safetensors_carries_its_config(tmp_path, source):
    path, _ = source
    out = str(tmp_path / "m.safetensors")
    assert main(["convert", path, out, "--config", "bort_tiny"]) == 0
    config, _ = read_checkpoint(out)
    assert config == get_config("bort_tiny")


def test_bad_requests_fail_cleanly(tmp_path, source, capsys):
    path, _ = source
    assert main(["convert", path, str(tmp_path / "x.bin"), "--config", "bort_tiny"]) == 2
    assert "unknown checkpoint format" in capsys.readouterr().err
    assert main(["convert", path, str(tmp_path / "y.pt")]) == 2
    assert "num_heads cannot be inferred" in capsys.readouterr().err
    assert main(["convert", path, path, "--config", "bort_tiny"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing.params"), str(tmp_path / "z.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "z.pt") and not os.path.exists(tmp_path / "y.pt")


def test_shape_mismatch_names_the_parameter(tmp_path, source):
    path, params = source
    bad = dict(params)
    bad["encoder.transformer_cells.1.proj.weight"] = bad["encoder.transformer_cells.1.proj.weight"][:, :7]
    bad_path = str(tmp_path / "bad.params")
    ckpt.save_params(bad_path, bad)
    with pytest.raises(ValueError, match="transformer_cells.1.proj.weight"):
        read_checkpoint(bad_path, "bort_tiny")
