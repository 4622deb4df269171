#!/usr/bin/env bash
# Build the isolated virtualenv that runs the CosyVoice reference implementation
# (PyPI cosyvoice-minicpmo: upstream's v1/v2 code) for tools/cosyvoice_reference_fixtures.py.
# It lives in .refvenv/ of the checkout (git ignores it) or where the argument says, and is never a
# dependency of the gateway.
#
#   tools/cosyvoice_reference_venv.sh [VENV]      # default: .refvenv in the repository root
#   .refvenv/bin/python tools/cosyvoice_reference_fixtures.py
set -euo pipefail
VENV="${1:-$(cd "$(dirname "$0")/.." && pwd)/.refvenv}"
python3 -m venv "$VENV"
PIP="$VENV/bin/pip"
# torch pinned in every command so nothing swaps it for a CUDA build. transformers 4.51.3 is one of
# the two versions upstream documents; with 4.57+ the reference's decode step masks the KV cache away.
"$PIP" install torch==2.13.0 "transformers==4.51.3" "diffusers==0.35.2" omegaconf einops hyperpyyaml \
    conformer librosa scipy openai-whisper onnxruntime inflect soundfile tiktoken torchaudio \
    hydra-core lightning rootutils gdown matplotlib wget rich
# The package's own requirements pull in onnxruntime-gpu and modelscope, which are not needed here.
"$PIP" install --no-deps cosyvoice-minicpmo
# PyPI's torchaudio wheel links CUDA libraries that a CPU torch does not have; the parts the
# reference uses (compliance.kaldi, transforms.Resample) are pure Python once the native
# libraries are out of the way.
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mkdir -p "$VENV/unused-torchaudio-libs"
find "$SITE/torchaudio/lib" -name '*.so' -exec mv {} "$VENV/unused-torchaudio-libs/" \;
# (from /: in the repository root, ``import cosyvoice`` would find the gateway's package, not upstream's)
cd / && "$VENV/bin/python" -c "import cosyvoice.llm.llm, cosyvoice.flow.flow, cosyvoice.hifigan.generator, torchaudio.compliance.kaldi, whisper; print('reference venv ready')"
