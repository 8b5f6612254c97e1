"""Throughput side by side: one worker process per (framework, config), same weights (one
.params file), same inputs (`parity.io.make_inputs`), interleaved timing rounds.

The parent never imports a framework. It writes the checkpoint (and the HF / ONNX exports the
anchors need), starts every worker, then for each workload warms all of them up and runs
`--repeats` rounds; each round gives every worker `--iters` timed steps, in a rotating
order, so load from other processes on the machine falls on all of them alike. Medians are
taken over all timed steps. A worker that cannot start (framework missing, no GPU, dtype not
supported) becomes a record with an `error` and the others are still measured. Every two
frameworks measured on a workload make a pair whose tokens/s ratio the report shows
(`report.pair_ratios`); `--expect-match R` turns the pairs into a verdict
(`report.mismatches`).

Frameworks:
  torch        bort_torch.BortModel with the fast paths (fused QKV + SDPA, inference_mode;
               low precision runs under torch.autocast)
  torch-compile  the same, through torch.compile (inference: inductor freezing, so weights
               are constants and GEMMs prepacked)
  torch-plain  the same model with the fused attention switched off (the plain reference)
  gluon        bort_gluon.BortModel with its unpadded encoder (fp32; AMP runs padded),
               hybridized with static_alloc/static_shape
  gluonnlp     GluonNLP's own BERTModel (no Bort changes), hybridized the same way
  hf           HF transformers BertModel on the HF export of the same weights (SDPA)
  onnx         ONNX Runtime on `bort export-onnx` of the same weights

Modules: workloads (frameworks, dtypes, workload presets, FLOPs per step), harness (the
parent: weights, worker processes, interleaved timing, records), worker (one framework's
runner serving the parent's requests), report (tables, pairs, verdict, chart; the
`throughput` command's output).
"""
