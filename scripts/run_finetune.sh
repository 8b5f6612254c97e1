#!/usr/bin/env bash
# Fine-tune Bort on one task with the 2020 release's recommended settings:
#   scripts/run_finetune.sh TASK            e.g. RTE, MRPC, SST-2, BoolQ, RACE-H (the task list: docs/data.md)
#   scripts/run_finetune.sh TEST1           smoke test, GLUE: WNLI on the hand-made fixtures
#   scripts/run_finetune.sh TEST2           smoke test, SuperGLUE: WSC on the hand-made fixtures
# Release values: 1 epoch, 1 ramp-up epoch, batch 8, seed 2, lr 5e-5, max_len 512, weight decay
# 110, warm-up 0.45, early stop 200. Environment knobs (defaults in brackets):
#   FRAMEWORK [gluon]  DATA_DIR [data]  CHECKPOINT [model/bort.params]  CONFIG [bort_4_8_768_1024]
#   VOCAB [the embedded demo BPE; give RoBERTa's files for bort.params]  OUT [runs/finetune/TASK]
#   EPS REPS BSZ SEED LR MAXLEN WD WMUP (the release's names for the values above)
# The smoke tests need no files: a randomly initialised bort_tiny on tests/fixtures/tasks, CPU,
# unless CHECKPOINT/CONFIG are set. Further arguments go to `bort finetune` as they are.
# Agora instead of one plain run: `bort agora --help`.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

if [ $# -lt 1 ]; then
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
TASK=$1
shift
FRAMEWORK="${FRAMEWORK:-gluon}"
EPS="${EPS:-1}"
REPS="${REPS:-1}"
BSZ="${BSZ:-8}"
SEED="${SEED:-2}"
LR="${LR:-5e-5}"
MAXLEN="${MAXLEN:-512}"
WD="${WD:-110.0}"
WMUP="${WMUP:-0.45}"
model=()

case "$TASK" in
    TEST1|TEST2)
        [ "$TASK" = TEST1 ] && TASK=WNLI || TASK=WSC
        DATA_DIR="${DATA_DIR:-$ROOT/tests/fixtures/tasks}"
        OUT="${OUT:-runs/finetune/test-$TASK}"
        if [ -n "${CHECKPOINT:-}" ]; then model+=(--checkpoint "$CHECKPOINT"); fi
        model+=(--config "${CONFIG:-bort_tiny}" --overwrite)
        ;;
    *)
        DATA_DIR="${DATA_DIR:-data}"
        CHECKPOINT="${CHECKPOINT:-model/bort.params}"
        if [ ! -e "$CHECKPOINT" ]; then
            echo "run_finetune.sh: no checkpoint at $CHECKPOINT (set CHECKPOINT=PATH)" >&2
            exit 2
        fi
        model+=(--checkpoint "$CHECKPOINT" --config "${CONFIG:-bort_4_8_768_1024}")
        OUT="${OUT:-runs/finetune/$TASK}"
        ;;
esac
if [ -n "${VOCAB:-}" ]; then model+=(--vocab "$VOCAB"); fi

set -x
exec bort finetune --framework "$FRAMEWORK" --task "$TASK" --data-dir "$DATA_DIR" \
    "${model[@]}" --output-dir "$OUT" --batch-size "$BSZ" --max-len "$MAXLEN" \
    --ramp-up-epochs "$REPS" --epochs "$EPS" --seed "$SEED" --warmup-ratio "$WMUP" \
    --weight-decay "$WD" --early-stop 200 --lr "$LR" "$@"
