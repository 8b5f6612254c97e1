#!/usr/bin/env bash
# The legacy oracle: runs `python -m parity.legacy make` on the ORIGINAL 2020 stack (Python 3.7,
# mxnet 1.5.0, gluonnlp 0.8.3, numpy 1.16.2; tox's `legacy` env calls this script) for
# bort_4_8_768_1024 and bort_tiny. For each config it writes, under artifacts/legacy/<config>/:
#   checkpoint.params  seeded non-trivial weights saved by the 2020 `save_parameters`
#                      (the tied word embedding stored as both word_embed.0.weight and decoder.3.weight)
#   inputs.npz         the parity inputs (parity.io format: 4 x 32 tokens, 5 masked positions)
#   taps.npz           embed, layer{i}, sequence_output, mlm_logits computed by the 2020 model
#   config.json        config name and fields, seed, init scheme, versions that ran
# Consumers: the py3.11 parity tests (tests/parity/test_legacy_oracle.py and the gluon/torch
# comparisons), which skip when artifacts/legacy/ is absent.
# Environment: PYTHON (default: python), LEGACY_OUT (default: artifacts/legacy), SEED (default: 0).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
OUT="${LEGACY_OUT:-artifacts/legacy}"
for config in bort_4_8_768_1024 bort_tiny; do
    "$PYTHON" -m parity.legacy make --config "$config" --out-dir "$OUT/$config" --seed "${SEED:-0}"
done
