"""Progress where stderr is no terminal (issue 23): log lines at start, every ~10 % / 30 s and at the end, with
count, rate and ETA; and in a piped `scene-kd run` for every stage, distillation epochs included."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scene_kd.progress import LOG_EVERY, progress_bar, track

ROOT = Path(__file__).resolve().parents[1]


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "scene_kd.progress"]


def test_log_lines_at_start_every_tenth_and_end_with_rate_and_eta(caplog):
    caplog.set_level(logging.INFO, logger="scene_kd.progress")
    with progress_bar(True, columns=("loss {task.fields[loss]:.2f}",)) as bar:  # pytest's stderr: no terminal
        task = bar.add_task("work", total=200, loss=1.0)
        for i in range(200):
            bar.update(task, advance=1, loss=1.0 / (i + 1))
    lines = _lines(caplog)
    assert lines[0] == "work: start, 200 to do"
    assert lines[-1].startswith("work: done, 200/200 (100%), ") and "loss 0.01" in lines[-1]
    middle = lines[1:-1]
    assert len(middle) == round(1 / LOG_EVERY) - 1  # 10 %, 20 %, ... 90 %
    assert all(re.search(r"\d+/200 \(\d+%\), [\d.,]+/s, loss [\d.]+, [\d.]+ s, ETA ", m) for m in middle), middle


def test_a_task_left_early_says_where_it_stopped(caplog):
    caplog.set_level(logging.INFO, logger="scene_kd.progress")
    with progress_bar(None) as bar:
        task = bar.add_task("train", total=10)
        for _ in range(4):
            bar.advance(task)
    assert _lines(caplog)[-1].startswith("train: stopped, 4/10 (40%)")


def test_disabled_means_silent_and_track_logs(caplog):
    caplog.set_level(logging.INFO, logger="scene_kd.progress")
    with progress_bar(False) as bar:
        bar.advance(bar.add_task("quiet", total=3))
    assert list(track([1, 2, 3], "items", enabled=False)) == [1, 2, 3]
    assert _lines(caplog) == []
    assert list(track([1, 2, 3], "items")) == [1, 2, 3]
    assert _lines(caplog)[0] == "items: start, 3 to do" and _lines(caplog)[-1].startswith("items: done, 3/3")


def _scene(tmp_path: Path) -> list[str]:
    from scene_kd.scene.io import save_scene
    from scene_kd.scene.synthetic import make_urban

    save_scene(make_urban(points=6000, seed=0), tmp_path / "u.ply")
    return ["run", str(tmp_path / "u.ply"), "--out", str(tmp_path / "r"), "--teacher", "oracle-labels", "--config",
            "ci", "--epochs", "2"]


def test_run_logs_progress_with_eta_for_every_stage(tmp_path, caplog):
    """In-process `scene-kd run` with pytest's stderr (no terminal): every long stage logs its lines."""
    from scene_kd.cli import main

    caplog.set_level(logging.INFO, logger="scene_kd.progress")
    assert main(_scene(tmp_path)) == 0
    _check_stage_lines("\n".join(_lines(caplog)))


@pytest.mark.slow
def test_piped_run_prints_progress_with_eta_for_every_stage(tmp_path):
    """`scene-kd run ... 2>&1 | cat`: stderr is a pipe, every long stage prints its progress lines."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "scene_kd.cli", *_scene(tmp_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout
    _check_stage_lines(out.stdout)
    assert "\x1b[" not in out.stdout and "\r" not in out.stdout  # no terminal codes in a log


def _check_stage_lines(text: str) -> None:
    for stage in (r"render \d+ views", r"features \(oracle-labels\)", "fuse views", "distil"):
        assert re.search(rf"^{stage}: start, \d+ to do$", text, re.M), (stage, text)
        assert re.search(rf"^{stage}.*: done, (\d+)/\1 \(100%\), ", text, re.M), (stage, text)
    assert re.search(r"^render \d+ views: \d+/\d+ \(\d+%\), [\d.,]+/s, [\d.]+ s, ETA [\d.]+ s$", text, re.M), text
    assert re.search(r"^distil epoch 2/2: \d+/\d+ \(\d+%\), .*ETA ", text, re.M), text  # per-epoch lines
