#!/usr/bin/env bash
# Issue #25 items 4-6 on a lent GPU, in one command of about 6-8 minutes (H100/H200; the steps' limits add
# up to 540 s, inside one call's 600).
#
# Here first (PyPI is reachable here, not there):   bash benchmarks/device_wheels.sh
# Then the device tool's run:  command "bash benchmarks/device_round2.sh", carry [".whl"], timeout_s 600.
# Each step has its own time limit and writes its output under $OUT, so a step that runs long
# costs only itself. STEPS="tests vision embed train prep" picks steps (default: all, in that order).
# SMOKE=1 runs every step at toy sizes: a check of the plumbing on a CPU, here, before spending
# device time (PY=.venv/bin/python SMOKE=1 bash benchmarks/device_round2.sh).
#
#   tests   the tests that have a GPU branch: the search probe on CUDA, batched vision attention
#   vision  benchmarks/vision_attention.py: the published vision towers (32 blocks, bf16, 16 images
#           at 448 px), stock attention (a loop over images) against the batched one (items 4, 6)
#   embed   benchmarks/gpu_embed.py at the 2B's shapes: ingest rate fed ready tensors, batched and
#           per-image vision attention, and one hierarchical b=200 query (items 4, 5)
#   train   benchmarks/gpu_train_step.py: a 7B LoRA step at 448 px, batch 16, bf16, checkpointing,
#           both attention modes, with the share of the dense bf16 peak (item 6)
#   prep    benchmarks/prep.py: the CPU stage's images/s per core on the device's CPUs (item 4: how
#           many cores feed 100 images/s)
set -uo pipefail
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-python3}
case $PY in /*) ;; */*) PY=$ROOT/$PY ;; esac  # a relative PY is relative to the repository
if [ "${SMOKE:-0}" != 1 ]; then  # the wheels are for the device's Python
    if ! compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
        echo "no wheels in $ROOT/.whl: run 'bash benchmarks/device_wheels.sh' on the development machine and" \
             "carry .whl (the device's transformers is older and it has no pydantic)" >&2
        exit 2
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$ROOT"/.whl/*.whl || exit 1
fi
# The repository root is the `dermground` package.
mkdir -p /tmp/pkg && ln -sfn "$ROOT" /tmp/pkg/dermground
export PYTHONPATH=/tmp/site:/tmp/pkg${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
cd "$ROOT/benchmarks" || exit 1
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())" | tee "$OUT/versions.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null | tee -a "$OUT/versions.txt"

step() {  # step NAME SECONDS COMMAND...: run it under a limit, output to $OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit}s): $*"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    echo "== $name: exit ${PIPESTATUS[0]}"
}

if [ "${SMOKE:-0}" = 1 ]; then
    vision=(--depth 1 --images 2 --image-size 112 --rounds 1)
    embed=(--shapes 2b --max-layers 1 --image-size 112 --images 4 --b 4 --configs 2:32 --parts ingest,ready,hierarchical)
    train=(--runs 2b:112:2:bf16 --max-layers 1 --steps 1 --warmup 0)
    prep=(--images 2 --sizes 133x133)
else
    vision=(--depth 32 --images 16 --rounds 3)
    embed=(--shapes 2b --images 64 --b 200 --configs 16:256,32:512 --parts ingest,ready,hierarchical)
    train=(--runs 7b:448:16:bf16 --checkpointing --steps 5 --warmup 2 --budget-s 100)
    prep=(--images 20 --sizes 133x133,600x450,1024x768)
fi
for s in ${STEPS:-tests vision embed train prep}; do
    case $s in
        tests) (cd "$ROOT" && step tests 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_search_embedder.py \
                    tests/test_vision_attention.py) ;;
        vision) step vision 90 "$PY" vision_attention.py "${vision[@]}" ;;
        embed) step embed 200 "$PY" gpu_embed.py "${embed[@]}" --vision-attention both --json "$OUT/gpu_embed.json" ;;
        train) step train 150 "$PY" gpu_train_step.py "${train[@]}" --vision-attention both \
                   --json "$OUT/gpu_train_step.json" ;;
        prep) step prep 40 "$PY" prep.py "${prep[@]}" ;;
        *) echo "unknown step $s (tests, vision, embed, train, prep)" ;;
    esac
done
