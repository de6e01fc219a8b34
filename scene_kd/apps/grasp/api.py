"""Python API for grasp-target lookup on a run folder: ``grasp_target(run_dir, query) -> GraspTarget``.

``GraspLookup`` loads the run's FeatureField and text encoder once and answers many queries (the HTTP
service keeps one). Results are in the scene's own (world) coordinates; a query with nothing confidently
relevant returns ``found=False`` with a reason instead of a guess.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from scene_kd.errors import SceneKDError
from scene_kd.query.grasp import GraspConfig, GraspTarget, find_grasp

__all__ = ["GraspConfig", "GraspLookup", "GraspTarget", "grasp_target"]


class GraspLookup:
    """Grasp targets for text queries on one run folder (thread-safe; the field is loaded once).

    run_dir: a run folder with field.safetensors/field.json.   source: fused | distilled | ensemble | auto.
    sensor: optional world position [3] of the sensor/robot (side approaches come from that side).
    """

    def __init__(self, run_dir: str | Path, cfg: GraspConfig | None = None, *, source: str = "auto",
                 sensor: tuple[float, float, float] | None = None):
        from scene_kd.field import FeatureField
        from scene_kd.query.similarity import load_encoder

        self.run_dir = Path(run_dir)
        self.field = FeatureField.load(self.run_dir)
        self.cfg = cfg or GraspConfig()
        self.source = source
        self.sensor_local = None if sensor is None else np.asarray(sensor, dtype=np.float64) - self.field.origin
        self.encoder = load_encoder(self.field) if len(self.field) else None
        self._lock = threading.Lock()

    def __call__(self, query: str) -> GraspTarget:
        from scene_kd.query.relevancy import relevancy
        from scene_kd.query.similarity import check_prompt

        query = check_prompt(query)
        if len(self.field) == 0:
            raise SceneKDError("the scene is empty: no points to search for a grasp target", path=self.run_dir)
        with self._lock:
            rel = relevancy(self.field, query, source=self.source, encoder=self.encoder)
        return find_grasp(self.field.positions, rel.numpy(), query=query, origin=self.field.origin, cfg=self.cfg,
                          sensor=self.sensor_local)


def grasp_target(run_dir: str | Path, query: str, *, cfg: GraspConfig | None = None, source: str = "auto",
                 sensor: tuple[float, float, float] | None = None) -> GraspTarget:
    """One grasp target for ``query`` in ``run_dir`` (see GraspLookup; build one for many queries)."""
    return GraspLookup(run_dir, cfg, source=source, sensor=sensor)(query)
