"""The torch fast paths (fused QKV + SDPA, the unpadded encoder, low precision, ONNX export)
compute what the plain model does; the throughput workers report missing devices instead of
failing."""
import argparse

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from bort_core.configs import get_config  # noqa: E402
from bort_torch import model as tm  # noqa: E402
from parity.io import make_inputs, random_params  # noqa: E402
from parity.throughput.harness import run  # noqa: E402
from parity.throughput.workloads import step_flops  # noqa: E402


def _model(name="bort_tiny", seed=0, **kw):
    config = get_config(name).without_dropout()
    model = tm.BortModel(config, **kw)
    tm.set_params(model, {k: v for k, v in random_params(config, seed).items()
                          if kw.get("use_decoder", True) or not k.startswith("decoder.")})
    return model.eval()


def _batch(config, batch=3, seq=16):
    inputs = make_inputs(batch, seq, config.vocab_size, 4, 0)
    return [torch.from_numpy(inputs[k]).long()
            for k in ("input_ids", "valid_length", "masked_positions")]


def test_fused_attention_matches_the_plain_path_forward_and_backward():
    model = _model()
    x, vl, pos = _batch(model.config)
    outs, grads = [], []
    for fused in (False, True):
        tm.set_fast_paths(model, fused)
        seq, logits = model(x, vl, pos)
        logits.square().mean().backward()
        outs.append((seq.detach(), logits.detach()))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        model.zero_grad()
    assert (outs[0][0] - outs[1][0]).abs().max() < 1e-5
    assert (outs[0][1] - outs[1][1]).abs().max() < 2e-5
    assert (outs[1][0][2, int(vl[2]):] == 0).all()   # padding still zeroed
    for name, g in grads[0].items():   # gradients reach the three canonical projections
        assert torch.allclose(g, grads[1][name], atol=1e-6, rtol=1e-4), name


def _forward_backward(model, x, vl, pos):
    """Sequence output, MLM logits and every parameter's gradient of one train-mode step."""
    model.zero_grad()
    seq, logits = model(x, vl, pos)
    (seq.square().mean() + logits.square().mean()).backward()
    return seq.detach(), logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("fused", [True, False])
def test_unpadded_encoder_matches_the_padded_path_forward_and_backward(monkeypatch, fused):
    model = _model().train()   # dropout-free config: train mode, deterministic
    tm.set_fast_paths(model, fused)
    x, vl, pos = _batch(model.config, batch=4, seq=24)
    assert (vl < 24).any() and (vl == 24).any()
    packed_rows, pack = [], tm.Packing.pack

    def counting_pack(self, t):
        packed_rows.append(len(self.index))
        return pack(self, t)

    monkeypatch.setattr(tm.Packing, "pack", counting_pack)
    per_sequence, attend = [], tm.MultiHeadSelfAttention._packed_attention

    def counting_attention(self, qkv, packing):
        per_sequence.append(packing.segments())
        return attend(self, qkv, packing)

    monkeypatch.setattr(tm.MultiHeadSelfAttention, "_packed_attention", counting_attention)
    seq, logits, grads = _forward_backward(tm.set_unpadded(model, True), x, vl, pos)
    assert packed_rows and set(packed_rows) == {int(vl.sum())}   # the packed path ran
    if fused:   # on CPU the fused path attends sequence by sequence over the packed rows
        ends = vl.cumsum(0).tolist()
        assert per_sequence and all(s == list(zip([0] + ends[:-1], ends)) for s in per_sequence)
    else:
        assert not per_sequence
    packed_rows.clear()
    ref_seq, ref_logits, ref_grads = _forward_backward(tm.set_unpadded(model, False), x, vl, pos)
    assert not packed_rows
    assert (seq - ref_seq).abs().max() <= 1e-5
    assert (logits - ref_logits).abs().max() <= 2e-5
    for b, n in enumerate(vl.tolist()):
        assert (seq[b, n:] == 0).all() and (seq[b, :n].abs().sum(-1) > 0).all()
    assert set(grads) == set(ref_grads)
    for name, g in grads.items():
        assert torch.allclose(g, ref_grads[name], atol=1e-6, rtol=1e-4), name


def test_unpadded_encoder_full_size_inference_and_no_padding():
    model = _model("bort_4_8_768_1024", use_decoder=False)
    x, vl, _ = _batch(model.config, batch=8, seq=128)
    with torch.inference_mode():
        packed = model(x, vl)
        padded = tm.set_unpadded(model, False)(x, vl)
        tm.set_unpadded(model, True)
        assert (packed - padded).abs().max() <= 1e-5
        assert all((packed[b, n:] == 0).all() for b, n in enumerate(vl.tolist()))
        full = torch.full_like(vl, x.shape[1])      # nothing to drop: the padded path runs
        assert tm.Packing(torch.ones_like(x, dtype=torch.bool)).has_padding is False
        assert (model(x, full) - model(x)).abs().max() <= 1e-5


def test_unpadded_encoder_steps_aside_for_hooks_and_classifier_keeps_its_head():
    """Forward hooks on the cells (parity.dump's taps) still see (B, L, U) outputs."""
    model = _model(use_decoder=False)
    x, vl, _ = _batch(model.config)
    seen = []
    handle = model.encoder.transformer_cells[0].register_forward_hook(
        lambda module, args, out: seen.append(tuple(out.shape)))
    with torch.inference_mode():
        hooked = model(x, vl)
        handle.remove()
        packed = model(x, vl)
        clf = tm.BortClassifier(model, 3)
        logits = clf(x, vl)
        tm.set_unpadded(model, False)
        assert (clf(x, vl) - logits).abs().max() <= 2e-5
    assert seen == [tuple(x.shape) + (model.config.units,)]
    assert (hooked - packed).abs().max() <= 1e-5


def test_fused_weights_follow_set_params_and_keep_the_canonical_names():
    model = _model(use_decoder=False)
    x, vl, _ = _batch(model.config)
    names = set(tm.get_params(model))
    with torch.inference_mode():
        before = model(x, vl)   # fills the fused-QKV cache
    params = {k: v for k, v in random_params(model.config, seed=1).items()
              if not k.startswith("decoder.")}
    tm.set_params(model, params)
    with torch.inference_mode():
        fused = model(x, vl)
        tm.set_fast_paths(model, False)
        plain = model(x, vl)
    assert set(tm.get_params(model)) == names
    assert (fused - before).abs().max() > 1e-3   # the cache did not serve stale weights
    assert (fused - plain).abs().max() < 1e-5


def test_bfloat16_autocast_stays_close_to_float32():
    model = _model()
    x, vl, pos = _batch(model.config)
    with torch.inference_mode():
        ref = model(x, vl, pos)[1]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, vl, pos)[1].float()
    rel = torch.linalg.vector_norm(low - ref) / torch.linalg.vector_norm(ref)
    assert 0 < rel < 0.05


def test_onnx_export_runs_in_onnxruntime(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from bort_core.commands import export_onnx

    model = _model(use_decoder=False)
    path = str(tmp_path / "bort.onnx")
    export_onnx.export_onnx(model, path)
    assert export_onnx.check_with_onnxruntime(model, path, batch=4, seq=20) < 1e-5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_export_onnx_cli_takes_a_fine_tuned_classifier(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from bort_core.cli import main

    src = str(tmp_path / "clf.params")
    tm.save_checkpoint(tm.BortClassifier(_model(use_decoder=False), 3), src)
    assert main(["export-onnx", src, str(tmp_path / "clf.onnx"), "--config", "bort_tiny",
                 "--check"]) == 0
    out = capsys.readouterr().out
    assert "bort_tiny backbone" in out
    assert float(out.split("max abs difference")[1]) < 1e-5


def test_export_onnx_cli_refuses_to_overwrite_and_names_a_bad_output(tmp_path, capsys):
    from bort_core.cli import main

    src = str(tmp_path / "m.params")
    tm.save_checkpoint(_model(), src)
    assert main(["export-onnx", src, str(tmp_path / "m.txt")]) == 2
    assert "must be a .onnx file" in capsys.readouterr().err
    (tmp_path / "m.onnx").write_text("x")
    assert main(["export-onnx", src, str(tmp_path / "m.onnx")]) == 2
    assert "--overwrite" in capsys.readouterr().err


def _args(**kw):
    base = dict(frameworks="torch,torch-plain", config="bort_tiny", checkpoint=None,
                batch_size=2, seq_len=8, preset=None, dtype="float32", mode="inference",
                device="cpu", threads=1, warmup=1, iters=2, repeats=2, peak_tflops=None,
                measure_peak=False, check_error=False, seed=0, workdir=None, json=None,
                progress=False)
    base.update(kw)
    return argparse.Namespace(**base)


def test_harness_measures_torch_workers_and_reports_a_missing_device(tmp_path):
    records = run(_args(workdir=str(tmp_path), frameworks="torch,torch-plain,nope"),
                     log=lambda *a: None)
    by = {r["framework"]: r for r in records}
    assert "unknown framework" in by["nope"]["error"]
    for fw in ("torch", "torch-plain"):
        assert by[fw]["tokens_per_s"] > 0 and by[fw]["steps"] == 4
        assert by[fw]["threads"] == 1 and by[fw]["versions"]["torch"] == torch.__version__
        assert by[fw]["tokens_per_s"] == pytest.approx(16 / by[fw]["latency_p50_ms"] * 1e3)
    if not torch.cuda.is_available():
        cuda = run(_args(workdir=str(tmp_path), device="cuda", frameworks="torch"),
                      log=lambda *a: None)
        assert "sees no CUDA device" in cuda[0]["error"]


def test_harness_train_mode_and_bfloat16_error_report(tmp_path):
    records = run(_args(workdir=str(tmp_path), frameworks="torch", mode="train",
                           dtype="bfloat16", check_error=True, measure_peak=True),
                     log=lambda *a: None)
    (rec,) = records
    assert rec["tokens_per_s"] > 0 and rec["mode"] == "train"
    assert set(rec["host_bf16_isa"]) <= {"amx_bf16", "avx512_bf16"}
    assert 0 <= rec["mlm_logit_rel_l2_err"] < 0.05 and rec["peak_tflops"] > 0
    assert rec["mfu"] == pytest.approx(rec["tflops"] / rec["peak_tflops"])
    assert rec["flops_per_step"] == step_flops(get_config("bort_tiny"), 2, 8, "train")
    assert np.isfinite(rec["latency_p90_ms"])
