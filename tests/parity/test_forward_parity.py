"""bort_gluon and bort_torch compute the same taps, gradients and checkpoints, and both match
the 2020 stack's own dump (artifacts of the legacy env)."""
import os
import subprocess
import sys

import pytest

mx = pytest.importorskip("mxnet")
torch = pytest.importorskip("torch")
pytestmark = pytest.mark.parity

from bort_core import checkpoint as ckpt  # noqa: E402
from bort_core.configs import get_config  # noqa: E402
from bort_gluon import model as gm  # noqa: E402
from bort_torch import model as tm  # noqa: E402
from parity import dump, grads, io  # noqa: E402
from parity.__main__ import build_model  # noqa: E402
from parity.compare import compare_taps, format_table  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FULL = "bort_4_8_768_1024"


def _assert_parity(a, b):
    rows = compare_taps(a, b)
    assert all(r["ok"] for r in rows), format_table(rows)
    return rows


@pytest.mark.parametrize("framework", ["gluon", "torch"])
@pytest.mark.parametrize("name", [FULL, "bort_tiny"])
def test_the_2020_checkpoint_loads_and_every_tap_matches_the_2020_stack(framework, name,
                                                                        legacy_dump):
    folder = legacy_dump(name)
    inputs = io.load_inputs(os.path.join(folder, "inputs.npz"))
    assert len(set(inputs["valid_length"].tolist())) > 1          # a padded batch
    backbone, _ = build_model(framework, name, os.path.join(folder, "checkpoint.params"), 0)
    taps = (dump.gluon_taps if framework == "gluon" else dump.torch_taps)(backbone, inputs)
    legacy = io.load_taps(os.path.join(folder, "taps.npz"))
    rows = _assert_parity(taps, legacy)
    assert {r["tap"] for r in rows} == set(legacy) == set(taps)


@pytest.fixture(scope="module")
def full_size(tmp_path_factory):
    """A full-size Bort classifier checkpoint with non-trivial weights, and a padded batch."""
    config = get_config(FULL)
    params = io.random_params(config, seed=11, num_classes=3)
    path = str(tmp_path_factory.mktemp("full") / "classifier.params")
    ckpt.save_params(path, params)
    return path, io.make_inputs(4, 48, config.vocab_size, 6, seed=3)


def test_gluon_and_torch_agree_on_every_tap_full_size(full_size):
    path, inputs = full_size
    g_backbone, g_clf = build_model("gluon", FULL, path, 3)
    t_backbone, t_clf = build_model("torch", FULL, path, 3)
    a = dump.gluon_taps(g_backbone, inputs, g_clf)
    b = dump.torch_taps(t_backbone, inputs, t_clf)
    rows = _assert_parity(a, b)
    assert {"embed", "layer3", "sequence_output", "mlm_logits", "classifier_logits"} <= \
        {r["tap"] for r in rows}


def _unpadded_outputs(backbone, classifier, inputs):
    """bort_torch's outputs with no hooks attached, so its unpadded encoder runs (the taps'
    hooks keep it on the padded path); the packed row count is checked on the way."""
    ids, valid, positions = (torch.from_numpy(inputs[k]).long() for k in io.INPUT_KEYS)
    packed, pack = [], tm.Packing.pack

    def counting_pack(self, x):
        packed.append(len(self.index))
        return pack(self, x)

    tm.Packing.pack = counting_pack
    try:
        with torch.no_grad():
            sequence, mlm = backbone(ids, valid, positions)
            out = {"sequence_output": sequence.numpy(), "mlm_logits": mlm.numpy()}
            if classifier is not None:
                out["classifier_logits"] = classifier(ids, valid).numpy()
    finally:
        tm.Packing.pack = pack
    assert packed and set(packed) == {int(inputs["valid_length"].sum())}
    return out


def test_unpadded_torch_matches_gluon_full_size(full_size):
    path, inputs = full_size
    g_backbone, g_clf = build_model("gluon", FULL, path, 3)
    gluon = dump.gluon_taps(g_backbone, inputs, g_clf)
    ours = _unpadded_outputs(*build_model("torch", FULL, path, 3), inputs)
    _assert_parity(ours, {k: gluon[k] for k in ours})


@pytest.mark.parametrize("name", [FULL, "bort_tiny"])
def test_unpadded_torch_matches_the_2020_stack(name, legacy_dump):
    folder = legacy_dump(name)
    inputs = io.load_inputs(os.path.join(folder, "inputs.npz"))
    backbone, _ = build_model("torch", name, os.path.join(folder, "checkpoint.params"), 0)
    ours = _unpadded_outputs(backbone, None, inputs)
    legacy = io.load_taps(os.path.join(folder, "taps.npz"))
    _assert_parity(ours, {k: legacy[k] for k in ours})


def test_gradients_of_every_parameter_agree_full_size():
    config = get_config(FULL).without_dropout()
    inputs = io.make_inputs(4, 32, config.vocab_size, 5, seed=0)
    params = io.random_params(config, seed=0, num_classes=3)
    g = gm.BortClassifier(gm.BortModel(config), 3, dropout=0.0)
    gm.initialize_like_release(g)
    gm.set_params(g, params)
    t = tm.BortClassifier(tm.BortModel(config), 3, dropout=0.0)
    tm.set_params(t, params)
    loss_g, grads_g = grads.gluon_grads(g, inputs, 3)
    loss_t, grads_t = grads.torch_grads(t, inputs, 3)
    assert abs(loss_g - loss_t) <= 1e-5 * abs(loss_t)
    rows = grads.compare_grads(grads_g, grads_t)
    assert len(rows) == len(params)
    assert all(r["ok"] for r in rows), rows[:3]


def test_cli_dump_and_compare(tmp_path):
    config = get_config("bort_tiny")
    checkpoint = str(tmp_path / "tiny.params")
    ckpt.save_params(checkpoint, io.random_params(config, seed=7), store_tied_decoder=True)

    def run(*args):
        return subprocess.run([sys.executable, "-m", "parity"] + list(args), cwd=ROOT,
                              capture_output=True, text=True)

    inputs = str(tmp_path / "in.npz")
    assert run("inputs", "--out", inputs, "--config", "bort_tiny").returncode == 0
    for fw in ("gluon", "torch"):
        out = run("dump", "--framework", fw, "--checkpoint", checkpoint, "--config", "bort_tiny",
                  "--inputs", inputs, "--out", str(tmp_path / (fw + ".npz")))
        assert out.returncode == 0, out.stderr
    report = str(tmp_path / "report.json")
    ok = run("compare", str(tmp_path / "gluon.npz"), str(tmp_path / "torch.npz"), "--json", report)
    assert ok.returncode == 0 and "PASS" in ok.stdout and os.path.exists(report)
    taps = io.load_taps(str(tmp_path / "torch.npz"))
    taps["layer1"][0, 0, 0] += 1e-4                     # beyond the 1e-5 tolerance
    io.save_taps(str(tmp_path / "bad.npz"), taps)
    bad = run("compare", str(tmp_path / "gluon.npz"), str(tmp_path / "bad.npz"))
    assert bad.returncode == 1 and "FAIL" in bad.stdout
    missing = run("dump", "--framework", "torch", "--checkpoint", checkpoint, "--config",
                  "bort_tiny", "--inputs", inputs, "--out", str(tmp_path / "x.npz"),
                  "--num-classes", "2")
    assert missing.returncode == 2 and "no classifier head" in missing.stderr
