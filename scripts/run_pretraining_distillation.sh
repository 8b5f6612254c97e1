#!/usr/bin/env bash
# Distillation pretraining of Bort with the 2020 release's arguments:
#   scripts/run_pretraining_distillation.sh NUMPROC 'TRAIN_GLOB' 'EVAL_GLOB' [TEACHER.params]
#   scripts/run_pretraining_distillation.sh NUMPROC TEST
# NUMPROC workers: horovodrun (FRAMEWORK=gluon, the default) or torchrun (FRAMEWORK=torch);
# one worker runs without a launcher. Release values: student bort_4_8_768_1024, teacher
# roberta_24_1024_16, float16 (the default DTYPE for torch; gluon's is float32, the only dtype
# bort_gluon pretrains in), 2,000,000 steps, lr 1e-4, 1024 tokens per worker and step,
# accumulate 1, 20 buckets sized by their mean length, KD weight 0.5 at temperature 2, MLM weight
# 0.1, log and checkpoint every 10 steps. Without TEACHER: teacherless MLM pretraining.
# TEST: a 4-step smoke run in float32 on shards of a sample of the embedded demo corpus,
# bort_tiny distilled from a roberta_tiny teacher that the script pretrains for 4 steps first
# (no files needed; TEST_DIR, default runs/pretraining_distillation_test, is made afresh).
# Environment knobs: FRAMEWORK DTYPE NUM_STEPS LR BS (tokens per worker) ACC LOG_INTERVAL
# CKPT_INTERVAL MODEL_NAME TEACHER_MODEL KD_LOSS (kl; `release` for the 2020 term) DIR_NAME
# HOROVODRUN_ARGS (default --gloo). Further arguments go to `bort pretrain` as they are.
# Log: DIR_NAME/train.log (DIR_NAME defaults to MODEL_NAME_model). Run again, it resumes from
# DIR_NAME's latest checkpoint; pass --overwrite to start over.
set -euo pipefail

# up to 4 positional arguments; the first one that starts with '-' begins the flags
ARGS=()
while [ $# -gt 0 ] && [ ${#ARGS[@]} -lt 4 ] && [[ "$1" != -* ]]; do ARGS+=("$1"); shift; done
if [ ${#ARGS[@]} -lt 2 ] || { [ "${ARGS[1]}" != TEST ] && [ ${#ARGS[@]} -lt 3 ]; }; then
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
NUMPROC=${ARGS[0]}
TRAIN_DATA=${ARGS[1]}
EVAL_DATA=${ARGS[2]:-}
TEACHER=${ARGS[3]:-}
FRAMEWORK="${FRAMEWORK:-gluon}"
# torch: the release's float16 (it ran on GPUs); gluon: float32, the only dtype bort_gluon has
if [ "$FRAMEWORK" = torch ]; then DTYPE="${DTYPE:-float16}"; else DTYPE="${DTYPE:-float32}"; fi
NUM_STEPS="${NUM_STEPS:-2000000}"
LR="${LR:-1e-4}"
BS="${BS:-1024}"
ACC="${ACC:-1}"
LOG_INTERVAL="${LOG_INTERVAL:-10}"
CKPT_INTERVAL="${CKPT_INTERVAL:-10}"
MODEL_NAME="${MODEL_NAME:-bort_4_8_768_1024}"
TEACHER_MODEL="${TEACHER_MODEL:-roberta_24_1024_16}"
KD_LOSS="${KD_LOSS:-kl}"

if [ "$TRAIN_DATA" = TEST ]; then
    TEST_DIR="${TEST_DIR:-runs/pretraining_distillation_test}"
    rm -rf "$TEST_DIR"
    mkdir -p "$TEST_DIR"
    # the first 500 lines (some 15 documents) of the embedded demo corpus, as the release's
    # sample_text.txt
    head -n 500 "$(python -c 'from bort_core.data.demo import CORPUS_PATH; print(CORPUS_PATH)')" \
        > "$TEST_DIR/sample_text.txt"
    bort create-pretraining-data --data "$TEST_DIR/sample_text.txt" --output-dir \
        "$TEST_DIR/data" --max-seq-length 128 --max-predictions-per-seq 20 --num-outputs 1 \
        --seed 12345 --quiet > /dev/null
    TRAIN_DATA="$TEST_DIR/data/*.npz"
    EVAL_DATA="$TEST_DIR/data/*.npz"
    MODEL_NAME=bort_tiny TEACHER_MODEL=roberta_tiny DTYPE=float32
    NUM_STEPS=4 BS=256 LOG_INTERVAL=2 CKPT_INTERVAL=2
    if [ -z "$TEACHER" ]; then
        bort pretrain --framework "$FRAMEWORK" --student roberta_tiny --data "$TRAIN_DATA" \
            --output-dir "$TEST_DIR/teacher" --num-steps 4 --tokens-per-batch 512 \
            --ckpt-interval 4 --no-tensorboard --quiet
        TEACHER="$TEST_DIR/teacher/0000004.params"
    fi
    DIR_NAME="${DIR_NAME:-$TEST_DIR/${MODEL_NAME}_model}"
fi
DIR_NAME="${DIR_NAME:-${MODEL_NAME}_model}"

args=(pretrain --framework "$FRAMEWORK" --student "$MODEL_NAME" --data "$TRAIN_DATA"
      --eval-data "$EVAL_DATA" --output-dir "$DIR_NAME" --num-steps "$NUM_STEPS" --lr "$LR"
      --tokens-per-batch $(( BS * NUMPROC )) --accumulate "$ACC" --num-buckets 20
      --teacher-ce-weight 0.5 --temperature 2.0 --mlm-weight 0.1 --kd-loss "$KD_LOSS"
      --log-interval "$LOG_INTERVAL" --ckpt-interval "$CKPT_INTERVAL" --dtype "$DTYPE")
if [ -n "$TEACHER" ]; then args+=(--teacher "$TEACHER" --teacher-config "$TEACHER_MODEL"); fi
args+=("$@")

if [ "$NUMPROC" -le 1 ]; then
    launch=(python -m bort_core.cli)
elif [ "$FRAMEWORK" = gluon ]; then
    # shellcheck disable=SC2206
    launch=(horovodrun -np "$NUMPROC" -H "localhost:$NUMPROC" ${HOROVODRUN_ARGS:---gloo}
            python -m bort_core.cli)
else
    launch=(python -m torch.distributed.run --nproc_per_node "$NUMPROC" -m bort_core.cli)
fi

mkdir -p "$DIR_NAME"
export MXNET_SAFE_ACCUMULATION=1
echo "+ ${launch[*]} ${args[*]}" | tee "$DIR_NAME/train.log"
"${launch[@]}" "${args[@]}" 2>&1 | tee -a "$DIR_NAME/train.log"
