"""Service identity and readiness."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateway import NAME, __version__
from gateway.dependencies import get_services
from gateway.services import Services

router = APIRouter(tags=["system"])
STATIC = Path(__file__).resolve().parents[1] / "static"


@router.get("/")
async def root() -> dict:
    return {"name": NAME, "message": "CosyVoice gateway is running", "version": __version__}


@router.get("/console", response_class=FileResponse, include_in_schema=False)
async def console() -> FileResponse:
    """The browser console: speak over WebRTC, stream text, interrupt, try the REST routes."""
    return FileResponse(STATIC / "console.html")


@router.get("/metrics", response_class=Response, include_in_schema=False)
async def metrics(services: Services = Depends(get_services)) -> Response:
    """Prometheus metrics (public only if ``auth.metrics_public``)."""
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/health")
async def health(services: Services = Depends(get_services)) -> JSONResponse:
    """200 only when the engine is loaded and answering; 503 while loading or broken."""
    engine = services.engine
    caps = engine.capabilities
    body = {
        "gpu": caps.gpu,
        "model": caps.model,
        "engine": caps.engine,
        "modes": sorted(mode.value for mode in caps.modes),
        "sample_rate": caps.sample_rate,
    }
    if engine.ready and await engine.probe():
        return JSONResponse({"status": "ok", **body})
    failure = services.engine_status.failure
    if failure is not None:
        return JSONResponse({"status": "error", "detail": failure, **body}, status_code=503)
    return JSONResponse({"status": "loading", **body}, status_code=503, headers={"Retry-After": "1"})
