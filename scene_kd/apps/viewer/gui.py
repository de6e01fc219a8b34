"""The viewer's viser widgets: built here, wired to :class:`scene_kd.apps.viewer.app.ViewerApp`'s actions.

No state or query logic lives here: each callback calls one ViewerApp method (the same ones tests call).
"""

from __future__ import annotations

import html
import logging
from typing import Any, Protocol

import numpy as np

from scene_kd.apps.viewer.colours import pick_point
from scene_kd.errors import SceneKDError

log = logging.getLogger(__name__)


class ViewerApp(Protocol):
    """What the widgets use of :class:`scene_kd.apps.viewer.app.ViewerApp` (which satisfies it): a Protocol, so
    that app.py imports this module and never the other way round (no import cycle, even for type checking)."""

    server: Any
    state: Any
    gui: dict[str, Any]
    field: Any
    points: Any
    _display_xyz: Any

    def display_index(self, *args: Any, **kwargs: Any) -> Any: ...
    def request(self, kind: str, value: Any) -> Any: ...
    def set_threshold(self, value: float) -> Any: ...
    def set_source(self, value: str) -> Any: ...
    def set_status(self, *args: Any, **kwargs: Any) -> Any: ...
    def show_true_colour(self) -> Any: ...
    def inspect(self, *args: Any, **kwargs: Any) -> Any: ...
    def export_selection(self, *args: Any, **kwargs: Any) -> Any: ...


def make_server(host: str, port: int) -> tuple[Any, int]:
    """(a viser server on host:port with +z up, the port it bound)."""
    import viser

    server = viser.ViserServer(host=host, port=port, verbose=False)
    server.scene.set_up_direction("+z")
    return server, server.get_port()


def build_gui(app: ViewerApp) -> dict[str, Any]:
    """Add the side panel to ``app.server`` and wire its callbacks; returns the widgets by name."""
    gui = app.server.gui
    w: dict[str, Any] = {}
    w["status"] = gui.add_markdown("**Loading the feature field...**")
    w["points_note"] = gui.add_markdown("")
    w["query"] = gui.add_text("Query", "", hint="Words to look for, e.g. 'building'; Enter to search")
    w["threshold"] = gui.add_slider("Threshold", min=0.0, max=1.0, step=0.01, initial_value=app.state.threshold)
    w["vocabulary"] = gui.add_text("Vocabulary", "", hint="Comma-separated labels or groups, e.g. ground=road+grass,building,tree")
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
    w["export"].on_click(lambda _e: on_export(app))

    @app.server.scene.on_click()
    def _(event) -> None:
        on_point_click(app, np.asarray(event.ray_origin), np.asarray(event.ray_direction))

    return w


def add_source_dropdown(app: ViewerApp, sources: tuple[str, ...], initial: str) -> Any:
    """The feature-source toggle, made once the field is loaded (its options and value are the field's, so
    creating it triggers no spurious update); placed just below the threshold slider."""
    src = app.server.gui.add_dropdown("Features", sources, initial_value=initial,
                                      order=app.gui["threshold"].order + 0.5)
    src.on_update(lambda _e: app.set_source(src.value))
    return src


def frame_initial_camera(server: Any, extent: np.ndarray) -> None:
    """The browser's first view: from the south, above, at a distance that frames ``extent`` [3]."""
    r = float(max(np.linalg.norm(extent), 1.0))
    server.initial_camera.far = max(1000.0, 10 * r)
    server.initial_camera.look_at = (0.0, 0.0, 0.0)
    server.initial_camera.position = (0.0, -0.45 * r, 0.6 * r)


def add_points(server: Any, xyz: np.ndarray, rgb: np.ndarray, extent: np.ndarray) -> Any:
    """The point cloud ([M, 3] float32 centred, [M, 3] uint8) with a point size from the mean spacing of the
    footprint ``extent`` [3], and an initial camera that frames it; returns the point-cloud handle."""
    m = len(xyz)
    area = max(float(extent[0] * extent[1]), 1e-6)
    spacing = np.sqrt(area / max(m, 1))
    size = float(np.clip(spacing * 1.6, 1e-4, max(float(extent.max()), 1e-3) / 50))
    points = server.scene.add_point_cloud("/scene", points=xyz, colors=rgb, point_size=size, point_shape="square",
                                          point_shading="flat", precision="float32")
    frame_initial_camera(server, extent)
    return points


def add_splats(server: Any, node: Any, extent: np.ndarray) -> Any:
    """A Gaussian-splat node (viser) from :class:`scene_kd.apps.viewer.splats.SplatNode` arrays (centred), and
    the same initial camera as the point view; returns the handle."""
    handle = server.scene.add_gaussian_splats("/scene", centers=node.centers, covariances=node.covariances,
                                              rgbs=node.rgbs, opacities=node.opacities)
    frame_initial_camera(server, extent)
    return handle


def set_colours(handle: Any, colours: np.ndarray) -> None:
    """Recolour the scene node: points (``colors``) or splats (``rgbs``), [M, 3] uint8."""
    if hasattr(handle, "rgbs") and not hasattr(handle, "point_size"):
        handle.rgbs = np.asarray(colours, np.float32) / 255.0
    else:
        handle.colors = colours


def on_point_click(app: ViewerApp, origin: np.ndarray, direction: np.ndarray) -> None:
    """A click on the scene (a ray, display coordinates): inspect the picked point (:meth:`ViewerApp.inspect`),
    show its world position, relevancy to the current query and top labels, and mark it with a small sphere."""

    if app.field is None:
        app.set_status(None, "The feature field is still loading.")
        return
    row = pick_point(app._display_xyz, origin, direction)
    if row is None:
        app.gui["inspect"].content = "No point under the cursor."
        return
    index = int(app.display_index[row])
    try:
        top = app.inspect(index)
    except SceneKDError as e:
        app.gui["inspect"].content = f"Cannot inspect: {e}"
        return
    world = app.field.world_positions()[index]
    lines = [f"**Point {index:,}** at ({world[0]:.2f}, {world[1]:.2f}, {world[2]:.2f})"]
    if app.state.relevancy is not None:
        lines.append(f"relevancy to '{app.state.query}': {app.state.relevancy[index]:.3f}")
    lines += [f"- {html.escape(n)}: {s:.3f}" for n, s in top]
    app.gui["inspect"].content = "  \n".join(lines)
    app.server.scene.add_icosphere("/picked", radius=float(app.points.point_size) * 1.5, color=(255, 255, 255),
                                   position=tuple(float(v) for v in app._display_xyz[row]))


def on_export(app: ViewerApp) -> None:
    """The export button: :meth:`ViewerApp.export_selection` in the chosen format; the outcome in the status."""

    try:
        path = app.export_selection(app.gui["export_format"].value)
    except SceneKDError as e:
        app.set_status(None, f"Export: {e}")
        return
    except Exception as e:
        log.exception("export failed")
        app.set_status(None, f"Export failed: {type(e).__name__}: {e}")
        return
    note = f" Note: {app.state.last_export_note}" if app.state.last_export_note else ""
    app.set_status(None, f"Exported {int(app.state.selection.sum()):,} points to {path}.{note}")
