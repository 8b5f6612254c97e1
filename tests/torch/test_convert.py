"""`bort convert` across .params, .pt, .safetensors and HF directories (no MXNet needed)."""
import os
import re

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


# ---- bad input: unreadable files, HF directories that do not match, interrupted exports

@pytest.mark.parametrize("ext", [".pt", ".safetensors"])
@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99])
def test_truncated_source_names_the_file(tmp_path, source, ext, keep, capsys):
    path, _ = source
    good = str(tmp_path / ("good" + ext))
    assert main(["convert", path, good, "--config", "bort_tiny"]) == 0
    data = open(good, "rb").read()
    bad = str(tmp_path / ("bad" + ext))
    with open(bad, "wb") as f:
        f.write(data[:int(len(data) * keep)])
    with pytest.raises(ValueError, match="truncated or corrupt") as err:
        read_checkpoint(bad, "bort_tiny")
    assert bad in str(err.value) and err.value.__cause__ is not None
    assert main(["convert", bad, str(tmp_path / "out.params"), "--config", "bort_tiny"]) == 2
    assert bad in capsys.readouterr().err


def test_pt_that_is_not_a_state_dict_is_refused(tmp_path):
    path = str(tmp_path / "x.pt")
    torch.save(torch.zeros(3), path)
    with pytest.raises(ValueError, match="x.pt: expected a state dict .* found a Tensor"):
        read_checkpoint(path, "bort_tiny")
    torch.save({"model": {}, "step": 3}, path)
    with pytest.raises(ValueError, match="x.pt: .* but model is a dict"):
        read_checkpoint(path, "bort_tiny")


def _hf_dir(tmp_path, params, edit=None, name="hf"):
    """An exported HF directory, its model.safetensors rewritten by `edit(tensors)`."""
    from safetensors.numpy import load_file, save_file

    from bort_core import hf

    directory = str(tmp_path / name)
    hf.save_hf(directory, get_config("bort_tiny"), params)
    if edit:
        weights = os.path.join(directory, hf.WEIGHTS_NAME)
        tensors = load_file(weights)
        edit(tensors)
        save_file(tensors, weights)
    return directory


def test_hf_dir_with_unreadable_files_names_them(tmp_path, source):
    _, params = source
    directory = _hf_dir(tmp_path, params)
    weights, config = (os.path.join(directory, n) for n in ("model.safetensors", "config.json"))
    os.truncate(weights, os.path.getsize(weights) // 2)
    with pytest.raises(ValueError, match=re.escape(weights) + " .*truncated or corrupt"):
        read_checkpoint(directory)
    with open(config, "w") as f:
        f.write("{")
    with pytest.raises(ValueError, match=re.escape(config + ": not valid JSON")):
        read_checkpoint(directory)


def test_hf_dir_with_an_extra_tensor_is_refused(tmp_path, source):
    _, params = source
    extra = "bert.encoder.layer.2.output.dense.bias"   # a layer beyond the config's 2

    def add(tensors):
        tensors[extra] = np.zeros(128, np.float32)

    directory = _hf_dir(tmp_path, params, add)
    with pytest.raises(ValueError) as err:
        read_checkpoint(directory)
    message = str(err.value)
    assert os.path.join(directory, "model.safetensors") in message
    assert "unexpected parameter %s (shape (128,))" % extra in message
    assert "config 'bort_tiny' in HF BertForMaskedLM names" in message


def test_hf_dir_missing_a_tensor_is_refused(tmp_path, source):
    _, params = source
    gone = "bert.encoder.layer.1.attention.self.query.bias"
    directory = _hf_dir(tmp_path, params, lambda tensors: tensors.pop(gone))
    with pytest.raises(ValueError) as err:
        read_checkpoint(directory)
    assert os.path.join(directory, "model.safetensors") in str(err.value)
    assert "missing parameter %s (expected shape (128,))" % gone in str(err.value)


def test_hf_dir_may_hold_what_hf_writes(tmp_path, source):
    _, params = source

    def add(tensors):   # an old transformers' buffer, the tied copy, BertForPreTraining's heads
        tensors["bert.embeddings.position_ids"] = np.arange(128)[None]
        tensors["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"]
        tensors["bert.pooler.dense.bias"] = np.zeros(128, np.float32)
        tensors["cls.seq_relationship.bias"] = np.zeros(2, np.float32)

    directory = _hf_dir(tmp_path, params, add)
    with pytest.warns(RuntimeWarning, match="dropping bert.pooler.dense.bias, cls.seq_rel"):
        _, back = read_checkpoint(directory)
    assert _equal(dict(back), params)

    def untie(tensors):
        tensors["cls.predictions.decoder.weight"] = np.ones_like(
            tensors["bert.embeddings.word_embeddings.weight"])

    directory = _hf_dir(tmp_path, params, untie, name="untied")
    with pytest.raises(ValueError, match="untied/model.safetensors: cls.predictions.decoder.weight "
                       "differs from bert.embeddings.word_embeddings.weight"):
        read_checkpoint(directory)


def _snapshot(directory):
    return {name: open(os.path.join(directory, name), "rb").read()
            for name in sorted(os.listdir(directory))}


@pytest.fixture()
def exported(tmp_path, source):
    """An HF export holding a tokenizer file too, and a second checkpoint to export over it."""
    path, params = source
    directory = str(tmp_path / "hf")
    assert main(["convert", path, directory, "--config", "bort_tiny"]) == 0
    with open(os.path.join(directory, "vocab.json"), "w") as f:
        f.write("{}")
    other = str(tmp_path / "other.params")
    ckpt.save_params(other, random_params(get_config("bort_tiny"), seed=6))
    return directory, other


def test_hf_export_over_a_directory_swaps_the_pair(tmp_path, exported):
    directory, other = exported
    before = _snapshot(directory)
    assert main(["convert", other, directory, "--config", "bort_tiny", "--overwrite"]) == 0
    after = _snapshot(directory)
    assert after.keys() == before.keys() and after["vocab.json"] == before["vocab.json"]
    assert after["model.safetensors"] != before["model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["hf", "other.params", "src.params"]


def test_hf_export_failing_midway_leaves_the_old_directory(tmp_path, exported, monkeypatch,
                                                          capsys):
    import safetensors.numpy

    directory, other = exported
    before = _snapshot(directory)

    def full_disk(tensors, metadata=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save", full_disk)
    assert main(["convert", other, directory, "--config", "bort_tiny", "--overwrite"]) == 2
    assert capsys.readouterr().err == "bort convert: error: %s: No space left on device\n" % directory
    assert _snapshot(directory) == before
    assert sorted(os.listdir(tmp_path)) == ["hf", "other.params", "src.params"]


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_hf_export_failing_at_any_rename_leaves_the_old_directory(tmp_path, exported, fail_at,
                                                                    monkeypatch, capsys):
    directory, other = exported
    before = _snapshot(directory)
    calls = []

    def flaky(real):
        def rename(src, dst):
            calls.append(dst)
            if len(calls) == fail_at:
                raise OSError("rename %d failed" % fail_at)
            real(src, dst)
        return rename

    monkeypatch.setattr(os, "rename", flaky(os.rename))
    monkeypatch.setattr(os, "replace", flaky(os.replace))
    assert main(["convert", other, directory, "--config", "bort_tiny", "--overwrite"]) == 2
    assert "rename %d failed" % fail_at in capsys.readouterr().err
    assert _snapshot(directory) == before
    assert sorted(os.listdir(tmp_path)) == ["hf", "other.params", "src.params"]
