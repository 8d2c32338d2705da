"""Health, readiness, capabilities and the caller's tenant."""

from __future__ import annotations

from typing import Any, get_args

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.api.deps import SessionDep, SettingsDep, TenantDep
from app.api.schemas import TenantOut, problem_responses

router = APIRouter()


@router.get("/healthz", tags=["health"])
async def healthz() -> dict[str, str]:  # async: no threadpool hop for a route with no I/O
    return {"status": "ok"}


@router.get("/readyz", tags=["health"])
def readyz(session: SessionDep, settings: SettingsDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["database"] = f"error: {type(exc).__name__}"
    if settings.broker_url:
        import redis

        try:
            redis.Redis.from_url(settings.broker_url, socket_connect_timeout=1).ping()
            checks["broker"] = "ok"
        except redis.RedisError as exc:
            checks["broker"] = f"error: {type(exc).__name__}"
    else:
        checks["broker"] = "local executor (no broker)"
    ok = all(v == "ok" or v.startswith("local") for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ok else "unavailable", "checks": checks},
        status_code=200 if ok else 503,
    )


@router.get("/v1/capabilities", tags=["meta"], responses=problem_responses(401))
def capabilities(settings: SettingsDep, tenant: TenantDep) -> dict[str, Any]:
    from kdcore.checks import catalogue
    from kdcore.models import architecture_names
    from kdcore.spec import (
        EXPORT_FORMATS,
        KINDS,
        MAX_BATCH,
        MAX_CLASSES,
        MAX_EPOCHS,
        METHOD_DEFAULTS,
        TASKS,
        TrainingSpec,
    )

    text_methods = catalogue.text_methods()
    return {
        "kinds": list(KINDS),
        "tasks": list(TASKS),
        "methods": catalogue.image_methods(),
        "text_methods": text_methods,
        # what a spec that names only the method gets (docs/kdcore.md, "Methods")
        "method_defaults": {
            m: METHOD_DEFAULTS.get(m, {})
            for m in [*catalogue.image_methods(), *text_methods["causal_lm"]]
        },
        # the registry, then timm:<name> and hf:<Class>; GET /v1/architectures filters and
        # sizes them, POST /v1/architectures/layers lists one's layers
        "architectures": architecture_names(),
        "datasets": catalogue.datasets(),
        "export_formats": list(EXPORT_FORMATS),
        "schedules": list(get_args(TrainingSpec.model_fields["schedule"].annotation)),
        "executor": "celery" if settings.broker_url else "local",
        "limits": {
            "max_upload_bytes": settings.max_upload_bytes,
            "max_epochs": MAX_EPOCHS,
            "max_batch_size": MAX_BATCH,
            "max_classes": MAX_CLASSES,
            "max_attempts": settings.max_attempts,
        },
    }


@router.get("/v1/tenant", response_model=TenantOut, tags=["meta"], responses=problem_responses(401))
def tenant_info(tenant: TenantDep) -> TenantOut:
    return TenantOut(id=tenant.id, name=tenant.name, webhook_secret=tenant.webhook_secret)
