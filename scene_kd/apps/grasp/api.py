"""Python API for grasp-target lookup on a run folder: ``grasp_target(run_dir, query) -> GraspTarget``.

``GraspLookup`` opens the run's :class:`~scene_kd.query.session.QuerySession` once (field, text encoder, the
run's QueryConfig, one bounded text cache) and answers many queries (the HTTP service keeps one). Results are in the scene's own (world) coordinates; a query with nothing confidently
relevant returns ``found=False`` with a reason instead of a guess.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scene_kd.config import read_query_config
from scene_kd.errors import SceneKDError, UnknownConceptError
from scene_kd.query.grasp import GraspConfig, GraspTarget, find_grasp, refuse
from scene_kd.query.session import QuerySession
from scene_kd.query.similarity import check_prompt

__all__ = ["GraspConfig", "GraspLookup", "GraspTarget", "grasp_target"]


class GraspLookup:
    """Grasp targets for text queries on one run folder (thread-safe; the field is loaded once).

    run_dir: a run folder with field.safetensors/field.json.
    source: fused | distilled | ensemble | auto; None: the run's QueryConfig source.
    sensor: optional world position [3] of the sensor/robot (side approaches come from that side).
    Relevancy uses the run's QueryConfig (negatives, temperature, precision), as every other entry point.
    """

    def __init__(self, run_dir: str | Path, cfg: GraspConfig | None = None, *, source: str | None = None,
                 sensor: tuple[float, float, float] | None = None):

        self.run_dir = Path(run_dir)
        self.session = QuerySession.open(self.run_dir, query=read_query_config(self.run_dir))
        self.field = self.session.field
        self.cfg = cfg or GraspConfig()
        self.source = source
        self.sensor_local = None if sensor is None else np.asarray(sensor, dtype=np.float64) - self.field.origin

    def relevancy(self, query: str) -> np.ndarray:
        """[N] float32 relevancy of every point to ``query`` (the session's, with this lookup's source)."""

        query = check_prompt(query)
        if len(self.field) == 0:
            raise SceneKDError("the scene is empty: no points to search for a grasp target", path=self.run_dir)
        return self.session.relevancy(query, source=self.source).numpy()

    def __call__(self, query: str) -> GraspTarget:
        query = check_prompt(query)
        try:
            rel = self.relevancy(query)
        except UnknownConceptError as e:  # the oracle's fixed vectors: a robot gets "not found", not an error
            return refuse(query, f"no confident target for {query!r}: {e}")
        return find_grasp(self.field.positions, rel, query=query, origin=self.field.origin, cfg=self.cfg,
                          sensor=self.sensor_local)


def grasp_target(run_dir: str | Path, query: str, *, cfg: GraspConfig | None = None, source: str | None = None,
                 sensor: tuple[float, float, float] | None = None) -> GraspTarget:
    """One grasp target for ``query`` in ``run_dir`` (see GraspLookup; build one for many queries)."""
    return GraspLookup(run_dir, cfg, source=source, sensor=sensor)(query)
