import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from bort_core import arch  # noqa: E402
from bort_core.configs import get_config  # noqa: E402
from bort_torch import model as tm  # noqa: E402
from parity.io import make_inputs, random_params  # noqa: E402


def _batch(config, seed=0):
    inputs = make_inputs(3, 16, config.vocab_size, 4, seed)
    return {k: torch.from_numpy(v).long() for k, v in inputs.items()}


def test_decoder_is_tied_and_optional():
    config = get_config("bort_tiny")
    model = tm.BortModel(config)
    assert model.decoder[3].weight is model.word_embed[0].weight
    assert model.decoder[2].eps == 1e-12 and model.encoder.layer_norm.eps == 1e-5
    bare = tm.BortModel(config, use_decoder=False)
    assert set(tm.get_params(bare)) == set(arch.canonical_shapes(config, with_decoder=False))


def test_dropout_only_in_training():
    config = get_config("bort_tiny")
    torch.manual_seed(0)
    model = tm.BortModel(config)
    batch = _batch(config)
    model.eval()
    with torch.no_grad():
        a = model(batch["input_ids"], batch["valid_length"])
        b = model(batch["input_ids"], batch["valid_length"])
        plain = tm.BortModel(config.without_dropout())
        tm.set_params(plain, tm.get_params(model))
        plain.eval()
        c = plain(batch["input_ids"], batch["valid_length"])
    assert torch.equal(a, b) and torch.equal(a, c)
    model.train()
    with torch.no_grad():
        d = model(batch["input_ids"], batch["valid_length"])
    assert not torch.allclose(a, d)


def test_padding_is_zeroed_and_does_not_leak():
    config = get_config("bort_tiny").without_dropout()
    model = tm.BortModel(config).eval()
    tm.set_params(model, random_params(config, seed=1))
    batch = _batch(config)
    with torch.no_grad():
        out = model(batch["input_ids"], batch["valid_length"])
        for b, n in enumerate(batch["valid_length"].tolist()):
            assert bool((out[b, n:] == 0).all())
            alone = model(batch["input_ids"][b:b + 1, :n], batch["valid_length"][b:b + 1])
            assert torch.allclose(alone[0], out[b, :n], atol=1e-5)


def test_mlm_logits_gather_masked_positions():
    config = get_config("bort_tiny").without_dropout()
    model = tm.BortModel(config).eval()
    batch = _batch(config)
    with torch.no_grad():
        seq, logits = model(batch["input_ids"], batch["valid_length"], batch["masked_positions"])
        b, m = 1, 2
        direct = model.decoder(seq[b, batch["masked_positions"][b, m]])
    assert logits.shape == (3, 4, config.vocab_size)
    assert torch.allclose(logits[b, m], direct, atol=1e-6)


def test_params_round_trip_without_mxnet(tmp_path):
    """bort_torch saves and loads .params with MXNet unimportable."""
    path = str(tmp_path / "m.params")
    code = """
import sys; sys.modules['mxnet'] = None; sys.modules['gluonnlp'] = None
import numpy as np, torch
from bort_torch import model as tm
from parity.io import random_params
from bort_core.configs import get_config
c = get_config('bort_tiny').replace(vocab_size=777)
m = tm.BortModel(c); tm.set_params(m, random_params(c, seed=3))
tm.save_checkpoint(m, %r)
back = tm.get_bort_model('bort_tiny', checkpoint=%r)
assert back.config.vocab_size == 777
a, b = tm.get_params(m), tm.get_params(back)
assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
print('ok')
""" % (path, path)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
