#!/usr/bin/env bash
# The GPU rows of README (issue 13, section 4), each one benchmark.py run
# writing OUT/<step>.json and OUT/<step>.log. A step that fails or runs past
# its limit is reported and the next one runs, so a short GPU lease still
# returns what it measured. bf16 autocast (the Cascade iteration fp32, fp16);
# run tools/gpu_check.py first (the stack and the kernels).
#
#   bash tools/gpu_figures.sh [--dry-run] [OUT [STEP ...]]
#
# Steps, in this order by default (what issue 13's targets rest on first:
# NomMer-T >= 1.0x Swin-T, >= 25% MFU in bf16 training at batch 128, the
# Cascade NomMer-B iteration within 32 GB):
#   t128            NomMer-T vs Swin-T at 224, batch 128: inference and
#                   training throughput, peak memory, MFU
#   cascade         a whole Cascade Mask R-CNN NomMer-B training iteration,
#                   2 images of 800x1333, fp32 and fp16 (tools/train.py
#                   --amp's dtype; mmcv 2.1.0's CUDA RoIAlign has no bf16
#                   kernel): time, peak memory
#   compile         NomMer-T vs Swin-T, batch 128, torch.compile
#   dense           NomMer-T backbone at 800x1333, batch 2
#   profile         NomMer-T's top CUDA ops of one bf16 training step
#   fast            NomMer-T, batch 128, nommer_mm's fast paths on and off
#                   (each was measured on CPUs only so far)
#   s128 b128       NomMer-S/B vs Swin-S/B, as t128
#   t256 s256 b256  the three pairs at batch 256
# STEP_LIMIT (seconds, default 300) bounds each step, twice that for
# compile; PYTHON (default python3, as in dist_train.sh) runs the tools.
# At the end the Markdown tables of every step and issue 13's
# targets (met, missed or not measured) are written to OUT/figures.md and
# printed (benchmark_table.py --targets).
# Exit status 1 if a step failed or timed out, or a measured target is missed.
set -u
DRY=0
if [ "${1:-}" = --dry-run ]; then
    DRY=1
    shift
fi
OUT=${1:-work_dirs/gpu_figures}
[ $# -gt 0 ] && shift
ALL="t128 cascade compile dense profile fast s128 b128 t256 s256 b256"
STEPS=${*:-$ALL}
LIMIT=${STEP_LIMIT:-300}
PYTHON=${PYTHON:-python3}
unset THIS_LIMIT  # set per step below (compile), never from the caller
FAILED=""
for s in $STEPS; do
    if [[ " $ALL " != *" $s "* ]]; then
        echo "gpu_figures: unknown step '$s'; the steps are: $ALL" >&2
        exit 2
    fi
done
cd "$(dirname "$0")/.."
mkdir -p "$OUT"

SWIN=mmpretrain::swin_transformer
pair() {  # NomMer size letter -> NomMer config and its Swin counterpart
    case $1 in
        t) echo configs/cls/nommer-tiny_8xb128_in1k.py $SWIN/swin-tiny_16xb64_in1k.py ;;
        s) echo configs/cls/nommer-small_8xb128_in1k.py $SWIN/swin-small_16xb64_in1k.py ;;
        b) echo configs/cls/nommer-base_8xb128_in1k.py $SWIN/swin-base_16xb64_in1k.py ;;
    esac
}
CASCADE=configs/det/cascade-mask-rcnn_nommer-b_fpn_ms-3x_coco.py

step() {  # name, then benchmark.py's arguments
    local name=$1
    shift
    local cmd=("$PYTHON" tools/analysis_tools/benchmark.py "$@" --json "$OUT/$name.json")
    if [ $DRY = 1 ]; then
        echo "${cmd[*]}"
        return
    fi
    local start=$SECONDS
    echo "== $name: ${cmd[*]}"
    timeout "${THIS_LIMIT:-$LIMIT}" "${cmd[@]}" >"$OUT/$name.log" 2>&1
    local rc=$?
    [ $rc = 0 ] || FAILED="$FAILED $name"
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    grep -E '^(device|matrix|  =>)|img/s|^  [a-z]' "$OUT/$name.log" | tail -n 12
}

for s in $STEPS; do
    case $s in
        t128 | s128 | b128 | t256 | s256 | b256)
            step "$s" --models $(pair "${s:0:1}") --batch "${s:1}" --dtype bf16 \
                --mfu --warmup 5 --reps 20 ;;
        compile)  # inductor compiles four graphs (2 models x 2 modes) first
            THIS_LIMIT=$((2 * LIMIT)) step compile --models $(pair t) \
                --batch 128 --dtype bf16 --compile --mfu --warmup 5 --reps 20 ;;
        profile)
            step profile --models configs/cls/nommer-tiny_8xb128_in1k.py \
                --batch 128 --dtype bf16 --mode train --warmup 3 --reps 3 \
                --no-memory --profile 30 ;;
        fast)
            step fast --models configs/cls/nommer-tiny_8xb128_in1k.py \
                --fast-vs-plain --batch 128 --dtype bf16 --warmup 5 --reps 20 ;;
        dense)
            step dense --models configs/cls/nommer-tiny_8xb128_in1k.py \
                --backbone-only --shape 800 1333 --batch 2 --dtype bf16 \
                --warmup 3 --reps 10 ;;
        cascade)
            step cascade-fp32 --models $CASCADE --shape 800 1333 --batch 2 \
                --mode train --warmup 2 --reps 5
            step cascade-fp16 --models $CASCADE --shape 800 1333 --batch 2 \
                --dtype fp16 --mode train --warmup 2 --reps 5 ;;
    esac
done
[ $DRY = 1 ] && exit 0
"$PYTHON" tools/analysis_tools/benchmark_table.py "$OUT" --targets >"$OUT/figures.md"
rc=$?
echo "== tables and targets: $OUT/figures.md"
cat "$OUT/figures.md"
if [ -n "$FAILED" ]; then
    echo "== failed or timed out:$FAILED (see OUT/<step>.log)"
    exit 1
fi
exit $rc
