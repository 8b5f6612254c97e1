#!/usr/bin/env bash
# The main job on the embedded default data, as far as the project goes today (`bort reproduce`,
# issue 8, will replace it): everything offline, a few minutes on 2 CPU cores.
#   1. 2020-format pretraining shards from the embedded corpus with the embedded BPE vocabulary
#   2. a bort_tiny checkpoint (non-trivial weights) moved through every format:
#      .params -> .pt -> .safetensors -> HuggingFace dir -> .params (bit-exact)
#   3. layer-wise parity: gluon vs torch taps on a padded batch, and gradients of every parameter
# Output: runs/demo/ (OUT to change it). Needs MXNet + GluonNLP + PyTorch (tox -e demo has them).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/demo}"
CONFIG="${CONFIG:-bort_tiny}"
rm -rf "$OUT" && mkdir -p "$OUT"

echo "== 1. pretraining data from the embedded corpus"
bort create-pretraining-data --output-dir "$OUT/data" --max-seq-length 128 \
    --max-predictions-per-seq 20 --num-outputs 2 --seed 12345

echo "== 2. checkpoint conversions ($CONFIG)"
python -m parity checkpoint --config "$CONFIG" --out "$OUT/model.params" --seed 0
bort convert "$OUT/model.params" "$OUT/model.pt" --config "$CONFIG"
bort convert "$OUT/model.pt" "$OUT/model.safetensors" --config "$CONFIG"
bort convert "$OUT/model.safetensors" "$OUT/model_hf"
bort convert "$OUT/model_hf" "$OUT/roundtrip.params"
python - "$OUT/model.params" "$OUT/roundtrip.params" <<'PY'
import sys
import numpy as np
from bort_core.checkpoint import load_params
a, b = load_params(sys.argv[1]), load_params(sys.argv[2])
same = a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
print("round trip .params -> .pt -> .safetensors -> HF -> .params: %s" % ("bit-exact" if same else "DIFFERS"))
sys.exit(0 if same else 1)
PY

echo "== 3. parity gluon vs torch"
python -m parity inputs --config "$CONFIG" --out "$OUT/inputs.npz" --seq-len 64
for fw in gluon torch; do
    python -m parity dump --framework $fw --checkpoint "$OUT/model.params" --config "$CONFIG" \
        --inputs "$OUT/inputs.npz" --out "$OUT/taps_$fw.npz"
done
python -m parity compare "$OUT/taps_gluon.npz" "$OUT/taps_torch.npz" --json "$OUT/parity_forward.json"
python -m parity grads --config "$CONFIG" --json "$OUT/parity_grads.json" --show 5
echo "demo done: $OUT"
