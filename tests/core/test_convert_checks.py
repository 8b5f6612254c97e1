"""`bort convert`'s checks on what it reads: one dtype throughout (or --dtype), the config a
file embeds (safetensors metadata, an HF config.json that must agree with its bort_config)."""
import json
import os

import numpy as np
import pytest

from bort_core import arch
from bort_core import checkpoint as ckpt
from bort_core.cli import main
from bort_core.configs import embedded_config, get_config
from bort_core.convert import one_dtype, read_checkpoint

TINY = get_config("bort_tiny").replace(vocab_size=64)
ODD = "encoder.transformer_cells.0.proj.weight"


@pytest.fixture()
def mixed(tmp_path):
    rng = np.random.RandomState(0)
    params = {n: rng.normal(0, 0.02, s).astype(np.float32)
              for n, s in arch.canonical_shapes(TINY).items()}
    params[ODD] = params[ODD].astype(np.float16)
    path = str(tmp_path / "mixed.params")
    ckpt.save_params(path, params)
    return path, params


def test_mixed_dtypes_are_refused_naming_the_tensor(mixed, tmp_path, capsys):
    path, _ = mixed
    out = str(tmp_path / "out.params")
    assert main(["convert", path, out, "--config", "bort_tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bort convert: error: %s: mixed dtypes: %s (float16) while the other "
                          % (path, ODD)) and "--dtype" in err
    assert not os.path.exists(out)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_dtype_casts_every_tensor(mixed, tmp_path, dtype):
    path, params = mixed
    out = str(tmp_path / "out.params")
    assert main(["convert", path, out, "--config", "bort_tiny", "--dtype", dtype]) == 0
    _, back = read_checkpoint(out, "bort_tiny")
    assert {v.dtype.name for v in back.values()} == {dtype}
    assert np.array_equal(back[ODD].astype(np.float32), params[ODD].astype(np.float32))


def test_a_cast_that_overflows_is_refused():
    with pytest.raises(ValueError, match="src.params: parameter w does not fit in float16 "
                                         r"\(max \|value\| 100000\)"):
        one_dtype({"w": np.array([1e5], np.float32)}, "src.params", "float16")


@pytest.mark.parametrize("text,message", [
    ("{", "is not valid JSON"),
    ("3", "must be a JSON object of config fields, found int"),
    ('{"num_layers": 2}', "missing config field"),
    ('{"num_layers": 2, "num_heads": 3, "units": 128, "hidden_size": 96}',
     "divisible by num_heads"),
])
def test_embedded_config_errors_name_file_and_field(text, message):
    with pytest.raises(ValueError, match="^f.safetensors: metadata bort_config.*" + message):
        embedded_config(text, "f.safetensors: metadata bort_config")


def _hf_export(tmp_path, mixed):
    pytest.importorskip("safetensors")
    path, _ = mixed
    hf = str(tmp_path / "hf")
    assert main(["convert", path, hf, "--config", "bort_tiny", "--dtype", "float32"]) == 0
    return hf, os.path.join(hf, "config.json")


def test_hf_config_agreeing_with_bort_config_loads(tmp_path, mixed):
    hf, config_path = _hf_export(tmp_path, mixed)
    with open(config_path) as f:
        data = json.load(f)
    data.update(transformers_version="4.40.0", torch_dtype="float32")   # what HF adds on saving
    with open(config_path, "w") as f:
        json.dump(data, f)
    config, _ = read_checkpoint(hf)
    assert config == TINY


def test_hf_config_contradicting_bort_config_is_refused(tmp_path, mixed, capsys):
    hf, config_path = _hf_export(tmp_path, mixed)
    with open(config_path) as f:
        data = json.load(f)
    data.update(num_attention_heads=8, layer_norm_eps=1e-12)
    with open(config_path, "w") as f:
        json.dump(data, f)
    assert main(["convert", hf, str(tmp_path / "out.params")]) == 2
    assert capsys.readouterr().err == (
        "bort convert: error: %s: contradicts its own bort_config: num_attention_heads is 8 but "
        "bort_config gives 4; layer_norm_eps is 1e-12 but bort_config gives 1e-05; make the two "
        "agree\n" % config_path)
