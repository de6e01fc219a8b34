"""The viewer's viser widgets: built here, wired to :class:`scene_kd.apps.viewer.app.ViewerApp`'s actions.

No state or query logic lives here: each callback calls one ViewerApp method (the same ones tests call).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from scene_kd.apps.viewer.app import ViewerApp


def build_gui(app: ViewerApp) -> dict[str, Any]:
    """Add the side panel to ``app.server`` and wire its callbacks; returns the widgets by name."""
    gui = app.server.gui
    w: dict[str, Any] = {}
    w["status"] = gui.add_markdown("**Loading the feature field...**")
    w["points_note"] = gui.add_markdown("")
    w["query"] = gui.add_text("Query", "", hint="Words to look for, e.g. 'building'; Enter to search")
    w["threshold"] = gui.add_slider("Threshold", min=0.0, max=1.0, step=0.01, initial_value=app.state.threshold)
    w["vocabulary"] = gui.add_text("Vocabulary", "", hint="Comma-separated labels, e.g. road,building,tree")
    w["apply_vocabulary"] = gui.add_button("Colour by labels")
    w["true_colour"] = gui.add_button("True colour")
    w["legend"] = gui.add_html("")
    w["inspect"] = gui.add_markdown("Click a point to see its top labels.")
    w["export_format"] = gui.add_dropdown("Export as", ("ply", "las"), initial_value="ply")
    w["export"] = gui.add_button("Export selection")

    w["query"].on_update(lambda _e: app.request("query", w["query"].value))
    w["threshold"].on_update(lambda _e: app.set_threshold(w["threshold"].value))
    w["apply_vocabulary"].on_click(lambda _e: app.request("vocabulary", w["vocabulary"].value))
    w["true_colour"].on_click(lambda _e: app.show_true_colour())
    w["export"].on_click(lambda _e: app.export_clicked())

    @app.server.scene.on_click()
    def _(event) -> None:
        app.clicked(np.asarray(event.ray_origin), np.asarray(event.ray_direction))

    return w


def add_source_dropdown(app: ViewerApp, sources: tuple[str, ...], initial: str) -> Any:
    """The feature-source toggle, made once the field is loaded (its options and value are the field's, so
    creating it triggers no spurious update); placed just below the threshold slider."""
    src = app.server.gui.add_dropdown("Features", sources, initial_value=initial,
                                      order=app.gui["threshold"].order + 0.5)
    src.on_update(lambda _e: app.set_source(src.value))
    return src


def add_points(server: Any, xyz: np.ndarray, rgb: np.ndarray, extent: np.ndarray) -> Any:
    """The point cloud ([M, 3] float32 centred, [M, 3] uint8) with a point size from the mean spacing of the
    footprint ``extent`` [3], and an initial camera that frames it; returns the point-cloud handle."""
    m = len(xyz)
    area = max(float(extent[0] * extent[1]), 1e-6)
    spacing = np.sqrt(area / max(m, 1))
    size = float(np.clip(spacing * 1.6, 1e-4, max(float(extent.max()), 1e-3) / 50))
    points = server.scene.add_point_cloud("/scene", points=xyz, colors=rgb, point_size=size, point_shape="square",
                                          point_shading="flat", precision="float32")
    r = float(max(np.linalg.norm(extent), 1.0))
    server.initial_camera.far = max(1000.0, 10 * r)
    server.initial_camera.look_at = (0.0, 0.0, 0.0)
    server.initial_camera.position = (0.0, -0.45 * r, 0.6 * r)
    return points
