"""The wheel, installed outside the checkout, runs a preset by name (presets ship as package data)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installed_outside_the_checkout_runs_a_preset(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(ROOT)], check=True)
    wheel = next(wheels.glob("scene_kd-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # the dependencies come from this environment's site-packages (a .pth line: nested .pth files, such as the
    # checkout's editable install, are not processed, so scene_kd can only come from the wheel)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(py), "-c", "import scene_kd; print(scene_kd.__file__)"], cwd=work, env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert where.startswith(site), where
    assert not (Path(site) / "apps").exists()  # no top-level `apps` package in site-packages
    scene = work / "block.ply"
    subprocess.run([str(venv / "bin" / "scene-kd"), "synth", "--kind", "urban", "--points", "4000", "--out",
                    str(scene)], cwd=work, env=env, check=True, capture_output=True)
    proc = subprocess.run([str(venv / "bin" / "scene-kd"), "run", str(scene), "--out", str(work / "r"), "--config",
                           "urban", "--teacher", "oracle-labels", "--width", "96", "--height", "96",
                           "--epochs", "1", "--json"], cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (work / "r" / "eval.json").exists()
