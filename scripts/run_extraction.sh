#!/usr/bin/env bash
# OSE extraction (bort extract), small default: the `tiny` search space (16 members) on shards of
# the embedded demo corpus, in both frameworks from the same seed, then the two rankings compared.
# Everything offline; a few minutes on 2 CPU cores. Knobs (environment):
#   OUT=runs/extraction  SPACE=tiny  EPSILON=1  STEPS=20  LR=1e-3  BATCH=8  FRAMEWORKS="gluon torch"
#   RESUME=1 continues an interrupted run (bort extract resumes the run its --output-dir holds)
#   instead of starting afresh.
# Any further arguments go to every `bort extract` call (e.g. --teacher PATH --teacher-config NAME).
# For the Bort paper's grid: SPACE=bort EPSILON=10 STEPS=200 and pretraining shards of real text
# (DATA=glob); `bort extract --dry-run --output-dir DIR` shows the plan first.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/extraction}"
SPACE="${SPACE:-tiny}"
if [ -n "${EPS:-}" ]; then   # the old name (run_finetune.sh's EPS counts epochs, as the release's)
    echo "run_extraction.sh: EPS is deprecated, use EPSILON (the FPTAS interval)" >&2
fi
EPSILON="${EPSILON:-${EPS:-1}}"
STEPS="${STEPS:-20}"
LR="${LR:-1e-3}"
BATCH="${BATCH:-8}"
FRAMEWORKS="${FRAMEWORKS:-gluon torch}"
DATA="${DATA:-$OUT/data/part-*.npz}"
RESUME="${RESUME:-0}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

if [ "$RESUME" != 1 ]; then
    for fw in $FRAMEWORKS; do rm -rf "${OUT:?}/$fw"; done
fi
if [ ! -e "$OUT/data/part-000.npz" ] && [ "$DATA" = "$OUT/data/part-*.npz" ]; then
    echo "== pretraining shards from the embedded demo corpus"
    bort create-pretraining-data --output-dir "$OUT/data" --max-seq-length 64 \
        --max-predictions-per-seq 10 --num-outputs 1 --seed 12345 --quiet > /dev/null
fi

for fw in $FRAMEWORKS; do
    echo "== bort extract --framework $fw ($SPACE space, eps $EPSILON, $STEPS steps)"
    start=$(date +%s)
    bort extract --framework "$fw" --search-space "$SPACE" --epsilon "$EPSILON" --steps "$STEPS" \
        --lr $LR --batch-size $BATCH --data $DATA --output-dir "$OUT/$fw" "$@"
    echo "$fw: $(( $(date +%s) - start )) s"
done

set -- $FRAMEWORKS
if [ $# -eq 2 ]; then
    echo "== $1 vs $2"
    python - "$OUT/$1/ranking.json" "$OUT/$2/ranking.json" <<'PY'
import json
import sys
from bort_core.extraction import compare_rankings
a, b = (json.load(open(p)) for p in sys.argv[1:3])
print(json.dumps(dict(compare_rankings(a["ranking"], b["ranking"]), best=[a["best"], b["best"]])))
PY
fi
echo "extraction done: $OUT"
