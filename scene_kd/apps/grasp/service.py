"""HTTP service for robot stacks (FastAPI): POST /grasp {"query": "red mug handle"} -> a grasp target.

OpenAPI docs at /docs. 200 with ``found: false`` and a ``reason`` when nothing is confidently relevant;
422 for a malformed request (FastAPI's validation detail); 400 with ``detail`` for a query the lookup refuses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from scene_kd.apps.grasp.api import GraspLookup
from scene_kd.errors import SceneKDError


class GraspRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=500, description="What to grasp, e.g. 'red mug handle'.",
                       examples=["mug handle"])
    with_indices: bool = Field(False, description="Also return the indices of the target's points.")


class OrientedBoxModel(BaseModel):
    center: list[float] = Field(description="World coordinates [x, y, z].")
    extent: list[float] = Field(description="Full edge lengths along the box axes, descending.")
    rotation: list[list[float]] = Field(description="3x3; columns are the box axes.")


class GraspResponse(BaseModel):
    query: str
    found: bool
    reason: str | None = Field(None, description="Why no target was returned (found = false).")
    position: list[float] | None = Field(None, description="Grasp centre between the fingertips, world [x, y, z].")
    orientation_xyzw: list[float] | None = Field(
        None, description="Gripper frame as a quaternion: z = approach, y = closing direction.")
    approach: list[float] | None = Field(None, description="Unit approach direction (gripper -> object).")
    closing: list[float] | None = Field(None, description="Unit direction the fingers close along.")
    normal: list[float] | None = None
    approach_kind: str | None = Field(None, description="'top' or 'side'.")
    reachable: bool | None = None
    width: float | None = Field(None, description="Opening width: the closing extent + margin (scene units).")
    score: float | None = Field(None, description="Mean relevancy of the target's points.")
    peak_relevancy: float | None = None
    point_count: int = 0
    obb: OrientedBoxModel | None = None
    point_indices: list[int] | None = None


class Health(BaseModel):
    status: str
    run: str
    points: int
    text_encoder: str



def create_app(lookup: GraspLookup) -> Any:
    """A FastAPI app answering grasp queries with ``lookup``."""
    from fastapi import FastAPI, Query
    from fastapi.responses import JSONResponse

    app = FastAPI(title="scene-kd grasp", version="1", description=(
        "Grasp targets from open-vocabulary 3D scenes. Coordinates are the scene's own (world) frame."))

    @app.exception_handler(SceneKDError)
    async def _refused(request, exc: SceneKDError):  # noqa: ANN001
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    def answer(query: str, with_indices: bool) -> dict[str, Any]:
        return lookup(query).to_json(with_indices=with_indices)

    @app.get("/health", response_model=Health)
    def health() -> dict[str, Any]:
        return {"status": "ok", "run": str(Path(lookup.run_dir).resolve()), "points": len(lookup.field),
                "text_encoder": lookup.field.text_encoder}

    @app.post("/grasp", response_model=GraspResponse, response_model_exclude_none=False)
    def grasp_post(req: GraspRequest) -> dict[str, Any]:
        return answer(req.query, req.with_indices)

    @app.get("/grasp", response_model=GraspResponse)
    def grasp_get(query: str = Query(min_length=1, max_length=500)) -> dict[str, Any]:
        return answer(query, False)

    return app
