"""Checkpoint round trips between the frameworks and HuggingFace, bit-exact, and HF's own
BertForMaskedLM on the export."""
import os

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.parity

from bort_core.cli import main  # noqa: E402
from bort_core.configs import get_config  # noqa: E402
from bort_gluon import model as gm  # noqa: E402
from bort_torch import model as tm  # noqa: E402
from parity import dump, io  # noqa: E402

FULL = "bort_4_8_768_1024"


def _equal(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def gluon_model():
    config = get_config(FULL).without_dropout()
    model = gm.BortModel(config)
    gm.initialize_like_release(model)
    gm.set_params(model, io.random_params(config, seed=21))
    return model


def test_gluon_torch_gluon_is_bit_exact(tmp_path, gluon_model):
    first = str(tmp_path / "gluon.params")
    gm.save_checkpoint(gluon_model, first)
    torch_model = tm.get_bort_model(FULL, checkpoint=first)
    pt = str(tmp_path / "torch.pt")
    torch.save(torch_model.state_dict(), pt)
    again = str(tmp_path / "again.params")
    assert main(["convert", pt, again, "--config", FULL]) == 0
    back = gm.get_bort_model(FULL, checkpoint=again)
    assert _equal(gm.get_params(back), gm.get_params(gluon_model))
    assert _equal(tm.get_params(torch_model), gm.get_params(gluon_model))


def test_gluon_hf_torch_is_bit_exact_and_hf_computes_bort(tmp_path, gluon_model):
    params_path = str(tmp_path / "gluon.params")
    gm.save_checkpoint(gluon_model, params_path)
    hf_dir = str(tmp_path / "hf")
    assert main(["convert", params_path, hf_dir, "--config", FULL]) == 0
    torch_model = tm.get_bort_model(FULL, checkpoint=params_path)
    via_hf = str(tmp_path / "via_hf.pt")
    assert main(["convert", hf_dir, via_hf]) == 0
    torch_model.load_state_dict(torch.load(via_hf, weights_only=True))
    assert _equal(tm.get_params(torch_model), gm.get_params(gluon_model))

    hf, info = transformers.BertForMaskedLM.from_pretrained(hf_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    hf.eval()
    inputs = io.make_inputs(4, 32, gluon_model.config.vocab_size, 5, seed=1)
    reference = dump.gluon_taps(gluon_model, inputs)
    ids = torch.from_numpy(inputs["input_ids"]).long()
    valid = np.arange(ids.shape[1])[None, :] < inputs["valid_length"][:, None]
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=torch.from_numpy(valid.astype(np.int64)),
                 output_hidden_states=True)
    hidden = out.hidden_states[-1].numpy()
    assert np.abs(hidden[valid] - reference["sequence_output"][valid]).max() <= 1e-5
    rows = np.arange(4)[:, None]
    logits = out.logits.numpy()[rows, inputs["masked_positions"]]
    # HF's head LayerNorm takes the model-wide eps (1e-5) instead of 2020's 1e-12
    assert np.abs(logits - reference["mlm_logits"]).max() <= 5e-4
    assert os.path.exists(os.path.join(hf_dir, "config.json"))
