#!/usr/bin/env bash
# Create .venv and install what is missing; a no-op when nothing changed.
# Usage: scripts/setup.sh [extras]   (e.g. "test" or "cosyvoice,ray,test")
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${1:-}"
python="${PYTHON:-python3}"
# torch is pinned in the same pip command as everything that depends on it, so
# pip never swaps in a different (multi-GB CUDA) build. Set TORCH_SPEC to choose.
torch_spec="${TORCH_SPEC:-torch==2.13.0}"

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi

stamp=".venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)-${extras//,/+}"
if [ ! -f "$stamp" ]; then
  spec="."
  [ -n "$extras" ] && spec=".[$extras]"
  packages=(-e "$spec")
  case ",$extras," in *,cosyvoice,*|*,test,*) packages=("$torch_spec" "${packages[@]}") ;; esac
  .venv/bin/pip install --quiet "${packages[@]}" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  # Silero VAD's ONNX model for barge-in; --no-deps: we run it with onnxruntime, not torch.
  .venv/bin/pip install --quiet --no-deps "silero-vad>=5.1" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  touch "$stamp"
fi
