"""The scene-kd web viewer: a thin viser shell over :mod:`scene_kd.query`.

``scene-kd view RUN`` shows the run's points in true colour (a random subsample above ``max_points``) and
lets a person query them in words: relevancy as a turbo colormap with a threshold, a vocabulary mode that
colours by label with a legend, click-to-inspect, a feature-source toggle, and export of the selection.

Server-side state lives in :class:`ViewerState` (``app.state``): the current query, relevancy, labels and
the selection mask over *all* field points, so tests and scripts can read what the person sees.
Queries go through the run's :class:`~scene_kd.query.session.QuerySession` (its QueryConfig: negatives,
temperature, template, threshold, source), so the viewer answers as the CLI does. They run on one worker
thread, latest request wins, so typing never queues up stale work. The widgets are built in
:mod:`scene_kd.apps.viewer.gui`, the colours in :mod:`scene_kd.apps.viewer.colours`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scene_kd.apps.viewer import gui
from scene_kd.apps.viewer.colours import (
    height_colours,
    label_colours,
    legend_html,
    relevancy_colours,
    warm_up,
)
from scene_kd.apps.viewer.splats import splat_node_arrays
from scene_kd.config import read_query_config
from scene_kd.errors import SceneKDError
from scene_kd.query.export import export_points
from scene_kd.query.labels import Vocabulary, parse_vocabulary
from scene_kd.query.segment import label_counts
from scene_kd.query.session import QuerySession
from scene_kd.query.similarity import resolve_source
from scene_kd.scene.runscene import load_run_scene

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_MAX_POINTS = 500_000
INSPECT_VOCABULARY = ("road", "building", "tree", "car", "ground", "grass", "water", "sidewalk", "pole", "wire")


@dataclass
class ViewerState:
    """What the viewer shows, over all N field points (not just the displayed subsample)."""

    status: str = "loading"  # loading | ready | error
    mode: str = "colour"  # colour | relevancy | vocabulary
    query: str = ""
    source: str = "auto"
    threshold: float = 0.5
    relevancy: np.ndarray | None = None  # [N] float32
    labels: list[str] = field(default_factory=list)  # output class names (group names for groups)
    vocabulary: Any = None  # the parsed scene_kd.query.labels.Vocabulary behind ``labels``
    label_index: np.ndarray | None = None  # [N] int64, -1 unknown
    confidence: np.ndarray | None = None  # [N] float32
    selection: np.ndarray | None = None  # [N] bool: relevancy > threshold, or labelled (not unknown)
    message: str = ""
    last_update_seconds: float = 0.0
    updates: int = 0  # finished query/vocabulary updates (tests wait on this)
    inspected: list[tuple[str, float]] = field(default_factory=list)
    last_export: str | None = None
    last_export_note: str | None = None  # the LAS class note of the last export (names without an ASPRS code)


class ViewerApp:
    """A viser server over one run folder. ``start()`` serves; the field loads on a background thread."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        max_points: int = DEFAULT_MAX_POINTS,
        text_encoder: str | None = None,
        encoder: Any | None = None,
        field: Any | None = None,
        seed: int = 0,
    ):
        if max_points < 1:
            raise SceneKDError(f"--max-points must be positive, got {max_points}")
        self.run_dir = Path(run_dir)
        self.host, self.port, self.max_points = host, int(port), int(max_points)
        self.expect_text_encoder = text_encoder
        self.encoder = encoder
        self._given_field = field  # an in-memory FeatureField instead of RUN/field.* (scripts, benchmarks)
        self.seed = seed
        self.state = ViewerState()
        self.session = None  # the run's QuerySession, set by load()
        self.field = None
        self.server = None
        self.display_index: np.ndarray | None = None  # [M] rows of the field shown in the browser
        self._display_xyz: np.ndarray | None = None  # [M, 3] float32, centred
        self._centre = np.zeros(3)
        self._base_rgb: np.ndarray | None = None  # [M, 3] uint8
        self._lock = threading.RLock()
        self._pending: tuple[str, str] | None = None
        self._wake = threading.Condition(self._lock)
        self._stopped = False
        self._loaded = threading.Event()
        self._worker: threading.Thread | None = None
        self.gui: dict[str, Any] = {}

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self, *, background_load: bool = True) -> ViewerApp:
        """Serve (viser server + widgets, :mod:`scene_kd.apps.viewer.gui`), start the query worker, load the run."""
        if self.host not in LOOPBACK_HOSTS:
            log.warning("viewer bound to %s: anyone who can reach this machine on port %d can see the scene and "
                        "write exports into %s", self.host, self.port, self.run_dir)
        self.server, self.port = gui.make_server(self.host, self.port)
        self.gui = gui.build_gui(self)
        self._worker = threading.Thread(target=self._work_loop, name="viewer-queries", daemon=True)
        self._worker.start()
        if background_load:
            threading.Thread(target=self.load, name="viewer-load", daemon=True).start()
        else:
            self.load()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._wake.notify_all()
        if self.server is not None:
            self.server.stop()

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def wait_loaded(self, timeout: float = 60.0) -> bool:
        return self._loaded.wait(timeout)

    def wait_updates(self, count: int, timeout: float = 30.0) -> bool:
        """Block until ``state.updates >= count`` and no request is pending."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if self.state.updates >= count and self._pending is None and not self._busy:
                    return True
            time.sleep(0.02)
        return False

    @property
    def selection(self) -> np.ndarray | None:
        """[N] bool: the points the current query/vocabulary selects (what export writes)."""
        return self.state.selection

    # ---- loading --------------------------------------------------------------------------------
    def load(self) -> None:
        """Open the run's QuerySession (field, text encoder, QueryConfig), then show the points. Errors go to
        the GUI."""

        try:
            session = QuerySession.open(self.run_dir, query=read_query_config(self.run_dir),
                                        field=self._given_field, encoder=self.encoder,
                                        expect_text_encoder=self.expect_text_encoder)
            fld = session.field
            source = resolve_source(fld, session.config.source) if fld.sources else "auto"
        except Exception as e:  # a viewer must not die on a bad run folder: the error goes to the GUI
            if not isinstance(e, SceneKDError):
                log.exception("loading %s failed", self.run_dir)
            self.set_status("error", f"Cannot load the run: {e if isinstance(e, SceneKDError) else f'{type(e).__name__}: {e}'}")
            self._loaded.set()
            return
        n = len(fld)
        if n > self.max_points:
            index = np.sort(np.random.default_rng(self.seed).choice(n, self.max_points, replace=False))
        else:
            index = np.arange(n)
        xyz = fld.positions[index]
        lo, hi = (fld.positions.min(0), fld.positions.max(0)) if n else (np.zeros(3), np.ones(3))
        centre = (lo + hi) / 2
        rgb = fld.rgb[index] if fld.rgb is not None else height_colours(xyz)
        warm_up()
        with self._lock:
            self.session, self.field, self.encoder = session, fld, session.encoder
            self.display_index, self._centre = index, centre.astype(np.float64)
            self._display_xyz = (xyz - centre).astype(np.float32)
            self._base_rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
            self.state.source = source
        splats = self._run_splats(index, centre) if fld.kind == "gaussians" else None
        if splats is not None:  # a Gaussian run is drawn as Gaussians, recoloured like points
            self.points = gui.add_splats(self.server, splats, extent=hi - lo)
        else:
            self.points = gui.add_points(self.server, self._display_xyz, self._base_rgb, extent=hi - lo)
        self.set_threshold(session.config.threshold)  # the run's hit threshold
        self.gui["threshold"].value = session.config.threshold
        note = f"{n:,} points"
        if n > self.max_points:
            note = (f"Showing {self.max_points:,} of {n:,} points (random subsample for the browser; "
                    f"queries, selection and export use all points).")
        if fld.sources:
            self.gui["source"] = gui.add_source_dropdown(self, tuple(fld.sources), source)
        self.gui["points_note"].content = note
        self.set_status("ready", f"Loaded {n:,} points; features: {', '.join(fld.sources)}; "
                                  f"text encoder {fld.text_encoder}.")
        self._loaded.set()

    def _run_splats(self, index: np.ndarray, centre: np.ndarray) -> Any:
        """The run's Gaussians at the displayed ``index`` as splat-node arrays (centred like the points), or None
        when the run folder has no copy of its Gaussians (then the centres are drawn as points)."""

        try:
            scene = load_run_scene(self.run_dir)
        except SceneKDError:
            return None
        if scene.kind != "gaussians" or len(scene) != len(self.field):
            return None
        node = splat_node_arrays(scene.subset(index) if len(index) < len(scene) else scene)
        return dataclasses.replace(node, index=index, centers=(node.centers - centre).astype(np.float32))

    # ---- actions (GUI callbacks and tests call these) ----------------------------------------------
    def set_status(self, status: str | None, message: str) -> None:
        with self._lock:
            if status is not None:
                self.state.status = status
            self.state.message = message
        widget = self.gui.get("status")
        if widget is not None:
            widget.content = message.replace("\n", "  \n")

    _busy = False

    def request(self, kind: str, text: str) -> None:
        """Queue a query ("query") or vocabulary ("vocabulary") update; the latest request wins."""
        with self._lock:
            self._pending = (kind, text)
            self._wake.notify_all()

    def _work_loop(self) -> None:
        while True:
            with self._lock:
                while self._pending is None and not self._stopped:
                    self._wake.wait(0.5)
                if self._stopped:
                    return
                kind, text = self._pending
                self._pending = None
                self._busy = True
            try:
                if kind == "query":
                    self.run_query(text)
                elif kind == "vocabulary":
                    self.run_vocabulary(text)
            except Exception as e:  # never let a callback kill the worker
                log.exception("viewer update failed")
                self.set_status(None, f"Error: {type(e).__name__}: {e}")
            finally:
                with self._lock:
                    self._busy = False
                    self.state.updates += 1

    def _ready(self) -> bool:
        if self.field is None:
            if self.state.status == "error":
                self.set_status(None, self.state.message.split("\n")[0] + "\nNothing to query.")
            else:
                self.set_status(None, "The feature field is still loading; try again in a moment.")
            return False
        return True

    def run_query(self, text: str) -> bool:
        """Relevancy of every point to ``text`` (the session's); colours + selection (relevancy > threshold)."""
        if not self._ready():
            return False
        text = (text or "").strip()
        if not text:
            self.set_status(None, "Type a query first (e.g. 'building').")
            return False
        t0 = time.perf_counter()
        try:
            rel = self.session.relevancy(text, source=self.state.source).numpy()
        except SceneKDError as e:
            self.set_status(None, f"Query failed: {e}")
            return False
        with self._lock:
            st = self.state
            st.mode, st.query, st.relevancy = "relevancy", text, rel
            st.selection = rel > st.threshold
        self._recolour()
        dt = time.perf_counter() - t0
        with self._lock:
            self.state.last_update_seconds = dt
        self.set_status(None, f"'{text}': {int(self.state.selection.sum()):,} of {len(rel):,} points with relevancy "
                               f"> {self.state.threshold:.2f} (max {rel.max():.3f}; {dt * 1000:.0f} ms)")
        return True

    def run_vocabulary(self, text: str) -> bool:
        """Label every point with one of the comma-separated labels or groups in ``text`` (``ground=road+grass,
        building``; the session's segmentation, as the ``segment`` verb); colours + legend by output class."""

        if not self._ready():
            return False
        try:
            vocab = parse_vocabulary(text or "")
            names = list(vocab.names)
            t0 = time.perf_counter()
            idx, conf = self.session.segment(vocab, source=self.state.source)
        except SceneKDError as e:
            self.set_status(None, f"Vocabulary: {e}")
            return False
        idx_np, conf_np = idx.numpy(), conf.numpy()
        with self._lock:
            st = self.state
            st.mode, st.labels, st.label_index, st.confidence = "vocabulary", names, idx_np, conf_np
            st.vocabulary = vocab
            st.selection = idx_np >= 0
        self._recolour()
        counts, _ = label_counts(idx_np, names)
        self.gui["legend"].content = legend_html(names, counts)
        dt = time.perf_counter() - t0
        with self._lock:
            self.state.last_update_seconds = dt
        self.set_status(None, f"Coloured by {len(names)} labels ({dt * 1000:.0f} ms).")
        return True

    def set_threshold(self, threshold: float) -> None:
        with self._lock:
            self.state.threshold = float(threshold)
            if self.state.mode == "relevancy" and self.state.relevancy is not None:
                self.state.selection = self.state.relevancy > self.state.threshold
        if self.state.mode == "relevancy":
            self._recolour()

    def set_source(self, source: str) -> None:
        with self._lock:
            if source == self.state.source:
                return
            self.state.source = source
            vocab = self.state.vocabulary
            mode, query = self.state.mode, self.state.query
            labels = vocab.spec() if vocab is not None else ",".join(self.state.labels)
        if mode == "relevancy":
            self.request("query", query)
        elif mode == "vocabulary":
            self.request("vocabulary", labels)

    def show_true_colour(self) -> None:
        with self._lock:
            self.state.mode, self.state.selection = "colour", None
        self.gui["legend"].content = ""
        self._recolour()

    def _recolour(self) -> None:
        if self.field is None:
            return
        st, idx = self.state, self.display_index
        if st.mode == "relevancy" and st.relevancy is not None:
            colours = relevancy_colours(st.relevancy[idx], self._base_rgb, st.threshold)
        elif st.mode == "vocabulary" and st.label_index is not None:
            colours = label_colours(st.label_index[idx])
        else:
            colours = self._base_rgb
        gui.set_colours(self.points, colours)

    def inspect(self, index: int, top: int = 5) -> list[tuple[str, float]]:
        """Top labels (cosine similarity of the templated names) of field point ``index`` over the current
        vocabulary, else the scene's class names, else a small default vocabulary (also ``state.inspected``)."""
        import torch

        fld = self.field
        vocab = self.state.vocabulary if self.state.labels else None
        if vocab is None:
            names = sorted(set(fld.label_names.values())) or list(INSPECT_VOCABULARY)
            names = [n for n in names if n.strip()][:64]
            vocab = Vocabulary(tuple(names), tuple((n,) for n in names))  # as written: no group grammar
        names = list(vocab.names)
        sims = self.session.point_similarities(index, vocab, source=self.state.source)
        order = torch.argsort(sims, descending=True)[:top]
        with self._lock:
            self.state.inspected = [(names[i], float(sims[i])) for i in order]
            return self.state.inspected

    def export_selection(self, fmt: str = "ply") -> Path:
        """Write the selected points to RUN/exports/<query-or-labels>-<time>.<fmt>; returns the path."""

        if self.field is None:
            raise SceneKDError("the feature field is not loaded")
        st = self.state
        if st.selection is None or not st.selection.any():
            raise SceneKDError("nothing selected: run a query (or colour by labels) first")
        what = st.query if st.mode == "relevancy" else "-".join(st.labels)
        slug = re.sub(r"[^A-Za-z0-9]+", "-", what).strip("-")[:40] or "selection"
        path = self.run_dir / "exports" / f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}.{fmt}"
        kwargs: dict[str, Any] = {"mask": st.selection}
        if st.mode == "relevancy":
            kwargs["relevancy"] = st.relevancy
        else:
            kwargs.update(label_index=st.label_index, confidence=st.confidence, label_names=st.labels,
                          label_members=st.vocabulary.members if st.vocabulary is not None else None)
        info = export_points(path, self.field, run_dir=self.run_dir, **kwargs)
        with self._lock:
            st.last_export = str(path)
            st.last_export_note = None
            if info.get("las_classes"):
                from scene_kd.query.export import las_class_message

                st.last_export_note = las_class_message(info["las_classes"])
        return path


def serve(run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8080, max_points: int = DEFAULT_MAX_POINTS,
          text_encoder: str | None = None) -> None:
    """Start the viewer and block until Ctrl-C."""
    app = ViewerApp(run_dir, host=host, port=port, max_points=max_points, text_encoder=text_encoder).start()
    print(f"scene-kd viewer: {app.url}  (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        app.stop()
