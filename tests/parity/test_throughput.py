"""The throughput harness: its pure arithmetic and tables, and one side-by-side run of both
frameworks (and the anchors present) on a tiny config through the CLI. No timing assertions."""
import json

import pytest

pytest.importorskip("mxnet")
pytest.importorskip("torch")
pytestmark = pytest.mark.parity

from bort_core.arch import forward_flops  # noqa: E402
from bort_core.configs import get_config  # noqa: E402
from parity.__main__ import main  # noqa: E402
from parity.throughput.harness import host_info, summarize  # noqa: E402
from parity.throughput.report import (  # noqa: E402
    format_table,
    mismatches,
    pair_ratios,
    pairs_table,
    plot,
    ratio_table,
    speedups,
)
from parity.throughput.workloads import FRAMEWORKS, parse_list, step_flops, workloads  # noqa: E402


def test_summarize_uses_medians_and_flops():
    s = summarize([0.1, 0.2, 0.3, 10.0], batch=4, seq=8, flops=2e12, peak_flops=4e13)
    assert s["latency_p50_ms"] == pytest.approx(250.0)
    assert s["tokens_per_s"] == pytest.approx(32 / 0.25) and s["sequences_per_s"] == pytest.approx(16)
    assert s["tflops"] == pytest.approx(8.0) and s["mfu"] == pytest.approx(0.2)
    assert s["latency_p90_ms"] > s["latency_p50_ms"] and s["steps"] == 4
    with pytest.raises(ValueError):
        summarize([], 1, 8)


def test_workloads_presets_and_flag_errors():
    assert workloads(batch=8, seq=128) == [(8, 128)]
    pairs = workloads("gluonnlp-inference")
    assert pairs[0] == (1, 128) and pairs[-1] == (32, 512)
    with pytest.raises(ValueError, match="--preset"):
        workloads("nope")
    with pytest.raises(ValueError, match="--batch"):
        workloads(batch=0, seq=128)
    with pytest.raises(ValueError, match="--frameworks: unknown x"):
        parse_list("torch,x", FRAMEWORKS, "--frameworks")


def test_host_info_names_the_cpu_generation_and_bf16_support(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\n"
                       "model\t\t: 1\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 1996.249\n"
                       "flags\t\t: fpu sse avx fma avx2\n\nprocessor\t: 1\n")
    host = host_info(str(cpuinfo))
    assert host["host_cpu"] == "AMD EPYC (family 23, model 1, 1996 MHz)"
    assert host["host_simd"] == ["avx2", "fma"] and host["host_bf16_isa"] == []
    cpuinfo.write_text("model name\t: Intel Xeon\nflags\t\t: avx512f amx_bf16 avx512_bf16\n")
    host = host_info(str(cpuinfo))
    assert host["host_cpu"] == "Intel Xeon" and host["host_bf16_isa"] == ["amx_bf16", "avx512_bf16"]
    assert host_info(str(tmp_path / "missing"))["host_cores"] >= 1


def test_step_flops_follow_arch():
    config = get_config("bort_4_8_768_1024")
    assert step_flops(config, 8, 128, "inference") == 8 * forward_flops(config, 128)["matmul"]
    assert step_flops(config, 2, 64, "train") == 3 * 2 * forward_flops(config, 64, 10)["matmul"]


def _rec(fw, config, tps, **kw):
    return dict(framework=fw, config=config, batch=8, seq=128, dtype="float32", mode="inference",
                device="cpu", tokens_per_s=tps, sequences_per_s=tps / 128, latency_p50_ms=1.0,
                latency_p90_ms=2.0, **kw)


def test_tables_ratios_and_chart(tmp_path):
    records = [_rec("torch", "bort", 800.0), _rec("torch", "base", 100.0),
               _rec("gluon", "bort", 400.0), _rec("gluon", "large", 20.0),
               dict(framework="onnx", error="no onnxruntime | here")]
    table = format_table(records)
    assert table.count("\n") == 6 and "error: no onnxruntime / here" in table
    assert speedups(records, "gluon")[("bort", "float32", "inference", 8, 128)]["torch"] == 2.0
    ratios = ratio_table(records, "bort")
    assert "| torch | float32 | 8 | 128 | 800 | 8.00x | - |" in ratios
    assert "| gluon | float32 | 8 | 128 | 400 | - | 20.00x |" in ratios
    pytest.importorskip("matplotlib")
    assert plot(records, str(tmp_path / "c.png")) and (tmp_path / "c.png").stat().st_size > 0


def test_pair_ratios_and_the_match_verdict_on_given_numbers():
    records = [_rec("torch", "bort", 1000.0), _rec("gluon", "bort", 850.0),
               _rec("hf", "bort", 600.0), _rec("torch", "base", 100.0),
               dict(_rec("gluon", "base", 1.0), error="worker exited")]
    rows = pair_ratios(records)
    assert [(r["a"], r["b"], round(r["ratio"], 4)) for r in rows] == [
        ("torch", "gluon", 1.1765), ("torch", "hf", 1.6667), ("gluon", "hf", 1.4167)]
    assert mismatches(rows, 2.0) == []
    assert [(r["a"], r["b"]) for r in mismatches(rows, 1.25)] == [("torch", "hf"),
                                                                     ("gluon", "hf")]
    slow = pair_ratios([_rec("gluon", "bort", 100.0), _rec("torch", "bort", 130.0)])
    assert len(mismatches(slow, 1.25)) == 1 and not mismatches(slow, 1.3)   # either way
    with pytest.raises(ValueError, match="--expect-match"):
        mismatches(rows, 0.8)
    table = pairs_table(rows, 1.25)
    assert "| torch / gluon | bort | float32 | inference | 8 | 128 | 1.18x | yes |" in table
    assert "| gluon / hf | bort | float32 | inference | 8 | 128 | 1.42x | NO |" in table
    preset = [dict(_rec(fw, "bort", tps), seq=seq) for seq, t, g in
              ((32, 100.0, 90.0), (128, 100.0, 70.0), (512, 100.0, 85.0))
              for fw, tps in (("torch", t), ("gluon", g))]
    assert "| torch / gluon | bort | float32 | inference | median | of 3 | 1.18x |" in \
        pairs_table(pair_ratios(preset))


@pytest.mark.parametrize("factor, rc", [("1.25", 1), ("2", 0), ("0.5", 2)])
def test_cli_expect_match_exit_status_and_report(tmp_path, monkeypatch, capsys, factor, rc):
    records = [_rec("torch", "bort", 1000.0), _rec("gluon", "bort", 700.0)]
    monkeypatch.setattr("parity.throughput.report.run", lambda args, log: records)
    out = tmp_path / "tp.json"
    assert main(["throughput", "--expect-match", factor, "--json", str(out)]) == rc
    if rc == 2:
        assert "--expect-match must be a factor >= 1" in capsys.readouterr().err
        return
    report = (tmp_path / "tp.md").read_text()
    assert "| torch / gluon | bort | float32 | inference | 8 | 128 | 1.43x |" in report
    assert ("throughput verdict: %s" % ("FAIL" if rc else "PASS")) in report
    assert ("MISMATCH: torch / gluon = 1.43x" in report) == bool(rc)


def _bench_pretraining():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "scripts", "bench_pretraining.py")
    spec = importlib.util.spec_from_file_location("bench_pretraining", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_pretraining_reports_each_pair_of_one_dtype():
    bench = _bench_pretraining()
    run = dict(ok=True, median_step_s=1.0, tokens_per_step=900.0, peak_rss_mb=1.0,
               load_before=[1.0], load_after=[1.0])
    report = dict(student="bort", teacher="t", data="demo", tokens_per_batch=1024, threads=1,
                  warmup=1, steps=2, host=host_info(), records=[
                      dict(run, framework="gluon", dtype="float32", tokens_per_s=90.0),
                      dict(run, framework="torch", dtype="float32", tokens_per_s=100.0),
                      dict(run, framework="torch", dtype="bfloat16", tokens_per_s=7.0),
                      dict(framework="gluon", dtype="bfloat16", ok=False, error="refused",
                           load_before=[1.0], load_after=[1.0])])
    rows = bench.pairs(report)
    assert [(r["a"], r["b"], r["dtype"], r["ratio"]) for r in rows] == [
        ("gluon", "torch", "float32", 0.9)]
    assert "| gluon / torch | bort | float32 | train | - | - | 0.90x | yes |" in \
        bench.markdown(report, 1.25)


def test_bench_pretraining_repeats_compare_medians():
    bench = _bench_pretraining()
    run = dict(ok=True, median_step_s=1.0, tokens_per_step=900.0, peak_rss_mb=1.0,
               load_before=[1.0], load_after=[1.0], dtype="float32")
    speeds = [("gluon", 90.0), ("torch", 100.0), ("gluon", 130.0), ("torch", 80.0),
              ("gluon", 120.0), ("torch", 110.0)]
    report = dict(student="bort", teacher="t", data="demo", tokens_per_batch=1024, threads=1,
                  warmup=1, steps=2, repeats=3, host=host_info(), records=[
                      dict(run, framework=fw, tokens_per_s=v) for fw, v in speeds])
    assert [(r["a"], r["b"], r["ratio"]) for r in bench.pairs(report)] == [
        ("gluon", "torch", 1.2)]                    # medians 120 and 100, no gluon / gluon row
    text = bench.markdown(report, 1.25)
    assert "| gluon | float32 | 3 | 120 |" in text and "| torch | float32 | 3 | 100 |" in text
    assert "| gluon / torch | bort | float32 | train | - | - | 1.20x | yes |" in text


def test_cli_side_by_side_on_a_tiny_config(tmp_path, capsys):
    out = tmp_path / "tp.json"
    rc = main(["throughput", "--frameworks", "torch,gluon,gluonnlp,bogus", "--config", "bort_tiny",
               "--batch-size", "2", "--seq-len", "8", "--threads", "1", "--warmup", "1", "--iters", "2",
               "--repeats", "2", "--workdir", str(tmp_path / "w"), "--json", str(out)])
    assert rc == 0
    records = json.loads(out.read_text())
    by = {r["framework"]: r for r in records}
    assert set(by) == {"torch", "gluon", "gluonnlp", "bogus"} and "error" in by["bogus"]
    for fw in ("torch", "gluon", "gluonnlp"):
        assert by[fw]["tokens_per_s"] > 0 and by[fw]["threads"] == 1, by[fw]
    assert "mxnet" in by["gluon"]["versions"] and "torch" in by["torch"]["versions"]
    assert (tmp_path / "tp.md").read_text().startswith("| framework |")
    assert "tokens/s" in capsys.readouterr().out
