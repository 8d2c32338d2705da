"""The web dashboard: a static single page (no build step) served at `/`. It talks to
the same /v1 API as every other client, with the key the user types in. The API
explorer at `/docs` is Swagger UI served from this service's own files (npm's
swagger-ui-dist, vendored at a pinned version under static/vendor/ with its licence and
SHA256SUMS, checked by tests/security/test_surface.py): no script or style from another
origin."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
SWAGGER_UI = STATIC / "vendor" / "swagger-ui-5.35.0"


def mount_dashboard(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:  # what a browser asks for before it reads the page
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    @app.get("/docs", include_in_schema=False)
    def api_explorer() -> FileResponse:
        return FileResponse(STATIC / "docs.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
