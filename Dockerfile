# CPU image: the gateway with the embedded voice (and the CosyVoice engine on CPU).
#   docker build -t cosyvoice-gateway .
#   docker run -p 8000:8000 cosyvoice-gateway
FROM python:3.11-slim AS cpu

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    GATEWAY_SERVER_HOST=0.0.0.0 GATEWAY_PATHS_DATA_DIR=/data
WORKDIR /app

COPY pyproject.toml README.md ./
COPY gateway gateway
COPY media media
COPY cosyvoice cosyvoice
COPY signaling signaling
COPY config.toml ./
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch>=2.3" \
 && pip install --no-cache-dir ".[cosyvoice]"

RUN useradd --create-home --uid 10001 gateway && mkdir -p /data && chown gateway /data
USER gateway
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/v1/health').status != 200)"
CMD ["python", "-m", "gateway"]
