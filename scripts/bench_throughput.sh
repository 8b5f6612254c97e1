#!/usr/bin/env bash
# Throughput side by side (issue 7): every framework in its own process on the same weights and
# inputs, interleaved rounds, medians. CPU numbers on a shared machine are noisy: compare
# frameworks within one run, not across runs. Output: runs/bench/ (OUT to change it).
#   1. fp32 inference B=8 L=128 bort_4_8_768_1024: torch (fused + SDPA), torch.compile, plain
#      torch, HF BertModel, bort_gluon, plain GluonNLP BERTModel, ONNX Runtime
#   1b. the matching verdict: torch vs gluon, fp32 inference and training (forward + backward of
#      the MLM loss) at B=8 L=128, --expect-match 1.25 (each within 0.8x of the other); a
#      mismatch is reported and the script goes on, exiting 1 at the end
#   2. bf16 vs fp32 torch (autocast; AMX where the CPU has it) with the MLM-logit error
#   3. Bort vs BERT-base vs BERT-large in both frameworks (the speed-ratio table)
#   4. GluonNLP's inference workload list (PRESET=1 to run it; long on 2 cores): the pairs
#      table gives each workload's ratio and their median
#   5. CUDA (when nvidia-smi sees a GPU): torch bf16 training B=32 L=512 with MFU, inference,
#      and gluon (reported as unavailable when MXNet has no GPU build)
# THREADS (default: all cores) is pinned equally for every framework; ITERS/REPEATS size runs.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/bench}"
THREADS="${THREADS:-$(nproc)}"
ITERS="${ITERS:-5}"
REPEATS="${REPEATS:-6}"
mkdir -p "$OUT"
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
TP=(python -m parity throughput --threads "$THREADS" --iters "$ITERS" --repeats "$REPEATS"
    --workdir "$OUT/weights")

echo "== 1. fp32 inference, B=8 L=128, bort_4_8_768_1024"
"${TP[@]}" --frameworks torch,torch-compile,torch-plain,hf,gluon,gluonnlp,onnx \
    --batch-size 8 --seq-len 128 --json "$OUT/fp32_b8_l128.json"

MATCH=0
for mode in inference train; do
    echo "== 1b. matching verdict, fp32 $mode, B=8 L=128: torch vs gluon within 1.25x"
    "${TP[@]}" --frameworks torch,gluon --mode "$mode" --batch-size 8 --seq-len 128 --expect-match 1.25 \
        --json "$OUT/match_${mode}_b8_l128.json" || MATCH=1
done

echo "== 2. torch bfloat16 vs float32 (autocast), MLM-logit error vs float32"
"${TP[@]}" --frameworks torch,torch-compile,gluon --dtype float32,bfloat16 --check-error \
    --batch-size 8 --seq-len 128 --json "$OUT/bf16_b8_l128.json"

echo "== 3. Bort vs BERT-base vs BERT-large (fp32, B=8 L=128)"
"${TP[@]}" --frameworks torch,gluon --config bort_4_8_768_1024,bert_12_768_12,bert_24_1024_16 \
    --batch-size 8 --seq-len 128 --json "$OUT/ratios_b8_l128.json"

if [ "${PRESET:-0}" = 1 ]; then
    echo "== 4. GluonNLP's inference workloads"
    "${TP[@]}" --frameworks torch,gluon,hf --preset gluonnlp-inference \
        --json "$OUT/preset_inference.json"
fi

if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    echo "== 5. CUDA: torch bf16 training B=32 L=512 (MFU against a measured bf16 GEMM peak)"
    "${TP[@]}" --device cuda --frameworks torch,torch-compile,gluon --dtype bfloat16 \
        --mode train --batch-size 32 --seq-len 512 --measure-peak --json "$OUT/cuda_train_bf16.json"
    "${TP[@]}" --device cuda --frameworks torch,torch-compile,hf,gluon --dtype float32,bfloat16,float16 \
        --batch-size 32 --seq-len 512 --measure-peak --json "$OUT/cuda_inference.json"
else
    echo "== 5. CUDA: skipped, no GPU visible (nvidia-smi)"
fi
exit "$MATCH"
