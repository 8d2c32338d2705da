"""Architectures a job may name, and their layers (for student_layers/teacher_layers)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import SettingsDep, TenantDep
from app.api.schemas import problem_responses
from app.errors import Invalid
from app.services import architectures

router = APIRouter(tags=["architectures"])


def _shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(p) for p in text.split(","))
    except ValueError:
        shape = ()
    if not 1 <= len(shape) <= 3 or not all(1 <= d <= 1024 for d in shape):
        raise Invalid([("/input_shape", "C,H,W or D, each between 1 and 1024")])
    return shape


@router.get("/v1/architectures", responses=problem_responses(401, 422))
def list_architectures(
    tenant: TenantDep,
    match: Annotated[str | None, Query(max_length=100, description="glob: 'timm:resnet*'")] = None,
    input_shape: Annotated[
        str | None, Query(description="e.g. 1,28,28: also give each one's parameter count")
    ] = None,
    classes: Annotated[int, Query(ge=1, le=100_000)] = 10,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> dict[str, Any]:
    return architectures.list_architectures(match, _shape(input_shape), classes, limit)


class LayersIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    arch: str = Field(min_length=1, max_length=100)
    config: dict[str, Any] | None = Field(default=None, description="hf:<Class> only")
    input_shape: list[int] = Field(min_length=1, max_length=3, description="C, H, W or D")
    num_classes: int = Field(default=10, ge=1, le=100_000)


@router.post("/v1/architectures/layers", responses=problem_responses(400, 401, 413, 422))
def architecture_layers(
    body: LayersIn, settings: SettingsDep, tenant: TenantDep
) -> list[dict[str, Any]]:
    shape = _shape(",".join(map(str, body.input_shape))) or ()
    return architectures.layers(settings, body.arch, body.config, shape, body.num_classes)
