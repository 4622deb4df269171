# Two images, one file:
#   docker build --target cpu  -t cosyvoice-gateway:cpu  .   # embedded voice; CosyVoice on CPU
#   docker build --target cuda -t cosyvoice-gateway:cuda .   # CosyVoice on NVIDIA GPUs, vLLM LLM backend
# Run:
#   docker run -p 8000:8000 -v voices:/data cosyvoice-gateway:cpu
#   docker run --gpus all -p 8000:8000 -v voices:/data -v /models/CosyVoice2-0.5B:/model:ro \
#     -e GATEWAY_ENGINE_MODEL_DIR=/model cosyvoice-gateway:cuda
# Without Docker, the README's two commands remain the way to run and test.

FROM scratch AS source
COPY pyproject.toml README.md config.toml /app/
COPY gateway /app/gateway
COPY media /app/media
COPY cosyvoice /app/cosyvoice
COPY signaling /app/signaling

FROM python:3.11-slim AS cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    GATEWAY_SERVER_HOST=0.0.0.0 GATEWAY_PATHS_DATA_DIR=/data
WORKDIR /app
COPY --from=source /app /app
# CPU torch from its own index so pip does not pull a CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.3" \
 && pip install ".[cosyvoice]" \
 && pip install --no-deps "silero-vad>=5.1"
RUN useradd --create-home --uid 10001 gateway && mkdir -p /data && chown gateway /data
USER gateway
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
  CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/v1/health', timeout=4).status != 200)"
CMD ["python", "-m", "gateway"]

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS cuda
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    GATEWAY_SERVER_HOST=0.0.0.0 GATEWAY_PATHS_DATA_DIR=/data GATEWAY_ENGINE_DEVICE=cuda \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
 && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
WORKDIR /app
COPY --from=source /app /app
# vLLM pins its own CUDA torch; install it first so ours agrees with it.
RUN pip install "vllm>=0.9" && pip install ".[cosyvoice]" && pip install --no-deps "silero-vad>=5.1"
RUN useradd --create-home --uid 10001 gateway && mkdir -p /data && chown gateway /data
USER gateway
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
  CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/v1/health', timeout=4).status != 200)"
CMD ["python", "-m", "gateway"]
