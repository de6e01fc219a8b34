"""Every command block of README.md runs as written on a fresh clone (issue 23).

Each ```bash block of the README follows an HTML comment saying how it is tested:

    <!-- readme-test: check -->                  checked only (servers, downloads, `make`, real teachers)
    <!-- readme-test: run | OLD => NEW | ... -->  checked, then run for real in the default suite
    <!-- readme-test: slow | OLD => NEW | ... --> checked, then run for real in the slow test

A block without the comment fails, so a new block has to say how it is tested. ``OLD => NEW`` substitutions
shrink the work of a run (``--config urban => --config ci``); they apply to the run only (the check reads the
README as written) and must match the block, so a stale one fails. Run blocks run in README order in one
temporary folder that holds the checkout's tracked files, as a fresh clone would (later blocks use earlier
blocks' outputs). Server verbs (``view``, ``grasp-serve``) are never run, only checked.

Checked for every command, as written:
- the program is one the README may use (``scene-kd``, ``.venv/bin/scene-kd``, ``make``, ``source``, ``mkdir``,
  ``curl``, ``python``);
- ``scene-kd VERB ARGS --help`` exits 0 (the verb exists; the preset, teacher and other resolved values are
  valid) and lists every ``--flag`` the command uses, so a misspelt verb, flag, preset or teacher fails;
- every path it reads exists in a fresh clone (``git ls-files``) or is made by an earlier command (``--out``,
  ``--export``, ``--capture``, ``mkdir``, ``curl -o``, ``make``'s ``.venv``);
- ``make`` targets exist; ``curl`` downloads the link ``scene-kd weights`` names to the path it expects.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

PROGRAMS = {"scene-kd", ".venv/bin/scene-kd", "make", "source", ".", "mkdir", "curl", "python", "python3",
            ".venv/bin/python"}
SERVERS = {"view", "grasp-serve"}  # long-running: checked, never run
OUTPUT_FLAGS = {"--out", "--export", "--capture", "-o"}
# what a make target leaves behind (Makefile: every target but clean depends on setup, which makes .venv;
# scene_kd/demo.py writes its runs under runs/demo)
MAKE_MAKES = {"setup": [".venv"], "demo": [".venv", "runs/demo"]}
PATH_SUFFIXES = {".las", ".laz", ".ply", ".splat", ".pcd", ".npy", ".txt", ".csv", ".yaml", ".yml", ".json",
                 ".py", ".pth", ".safetensors", ".png", ".html", ".md"}
ANNOTATION = re.compile(r"<!--\s*readme-test:\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    mode: str | None = None  # check | run | slow; None: no annotation
    subs: list[tuple[str, str]] = field(default_factory=list)

    def commands(self, substituted: bool = False) -> list[list[str]]:
        text = self.text
        if substituted:
            for old, new in self.subs:
                text = text.replace(old, new)
        return split_commands(text)


def parse_blocks(markdown: str) -> list[Block]:
    """The fenced code blocks of ``markdown`` with the readme-test annotation just above each."""
    lines = markdown.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        block = Block(start + 1, lang, "\n".join(lines[i + 1:j]))
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        note = ANNOTATION.match(lines[k].strip()) if k >= 0 else None
        if note:
            parts = [p.strip() for p in note.group(1).split("|")]
            block.mode = parts[0]
            for p in parts[1:]:
                old, sep, new = p.partition("=>")
                if not sep:
                    raise ValueError(f"README line {k + 1}: substitution {p!r} has no '=>'")
                block.subs.append((old.strip(), new.strip()))
        blocks.append(block)
        i = j + 1
    return blocks


def split_commands(text: str) -> list[list[str]]:
    """Simple shell commands of a bash block: continuation lines joined, comments dropped, split at && ; |."""
    cmds: list[list[str]] = []
    for line in text.replace("\\\n", " ").splitlines():
        cur: list[str] = []
        for tok in shlex.split(line, comments=True):
            if tok in ("&&", "||", ";", "|"):
                cmds.append(cur) if cur else None
                cur = []
            else:
                cur.append(tok)
        if cur:
            cmds.append(cur)
    return cmds


def split_env(cmd: list[str]) -> tuple[dict[str, str], list[str]]:
    env, i = {}, 0
    while i < len(cmd) and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", cmd[i]):
        key, _, val = cmd[i].partition("=")
        env[key] = val
        i += 1
    return env, cmd[i:]


def tracked_files() -> set[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
        return {p for p in out.decode().split("\0") if p}
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: the files on disk
        return {str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and ".venv" not in p.parts}


def norm(path: str) -> str:
    return os.path.normpath(os.path.expanduser(path))


def is_path_like(tok: str) -> bool:
    if "://" in tok or tok.startswith("-"):
        return False
    return "/" in tok or Path(tok).suffix.lower() in PATH_SUFFIXES


class Checker:
    """Checks commands in README order; remembers what earlier commands made."""

    def __init__(self, tracked: set[str], help_text, weights_rows: list[dict]):
        self.tracked = tracked
        self.dirs = {str(p) for f in tracked for p in Path(f).parents if str(p) != "."}
        self.made: set[str] = set()
        self.help_text = help_text  # (verb, args) -> (exit code, text)
        self.weights = {(norm(r["expected"]), r["source"]) for r in weights_rows}
        self.targets = set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), re.M))

    def exists(self, tok: str) -> bool:
        p = norm(tok)
        if any(c in p for c in "*?["):
            return any(fnmatch.fnmatch(f, p) for f in self.tracked | self.made)
        if p in self.tracked or p in self.dirs:
            return True
        return any(p == m or p.startswith(m + os.sep) for m in self.made)

    def check(self, cmd: list[str]) -> list[str]:
        """Problems with one command (empty: fine); records its outputs."""
        env, cmd = split_env(cmd)
        if not cmd:
            return []
        prog, args = cmd[0], cmd[1:]
        where = shlex.join(cmd)
        if prog not in PROGRAMS:
            return [f"{where}: unknown program {prog!r} (the README may use {', '.join(sorted(PROGRAMS))})"]
        errors: list[str] = []
        if prog.startswith(".venv/") and not self.exists(prog):
            errors.append(f"{where}: {prog} exists only after `make setup` (or demo/test)")
        if prog == "make":
            for t in args:
                if t not in self.targets:
                    errors.append(f"{where}: the Makefile has no target {t!r}")
                self.made.update(MAKE_MAKES.get(t, [".venv"] if t != "clean" else []))
            return errors
        if prog == "mkdir":
            self.made.update(norm(a) for a in args if not a.startswith("-"))
            return errors
        if prog == "curl":
            urls = [a for a in args if "://" in a]
            dest = args[args.index("-o") + 1] if "-o" in args else None
            if dest is None or len(urls) != 1:
                return [f"{where}: a download must name one URL and its destination (-o)"]
            if (norm(dest), urls[0]) not in self.weights:
                errors.append(f"{where}: not a (path, link) pair that `scene-kd weights` expects")
            if not self.exists(str(Path(norm(dest)).parent)):
                errors.append(f"{where}: the folder of {dest} is made by no earlier command")
            self.made.add(norm(dest))
            return errors
        if prog in ("python", "python3", ".venv/bin/python"):
            if args[:1] == ["-m"]:
                if importlib.util.find_spec(args[1]) is None:
                    errors.append(f"{where}: no module {args[1]}")
                args = args[2:]
            elif args and not self.exists(args[0]):
                errors.append(f"{where}: {args[0]} is not in a fresh clone")
            return errors
        if prog in ("source", "."):
            return [f"{where}: {a} is not in a fresh clone and made by no earlier command"
                    for a in args[:1] if not self.exists(a)]
        # scene-kd
        verb = args[0] if args and not args[0].startswith("-") else None
        code, text = self.help_text(verb, args[1:] if verb else [])
        if code != 0:
            errors.append(f"{where}: `scene-kd {verb or ''} ... --help` exits {code}: {text.strip()[-300:]}")
        for tok in args:
            if tok.startswith("--") and tok != "--help":
                flag = tok.split("=", 1)[0]
                if code == 0 and not re.search(r"(?<![\w.-])" + re.escape(flag) + r"(?![\w.-])", text):
                    errors.append(f"{where}: {flag} is not an option of `scene-kd {verb}` (not in its --help)")
        outputs = {i + 1 for i, a in enumerate(args) if a in OUTPUT_FLAGS}
        labels = {i + 1 for i, a in enumerate(args) if a == "--labels"}
        for i, tok in enumerate(args[1:] if verb else args, start=1 if verb else 0):
            if i in outputs:
                self.made.add(norm(tok))
            elif i not in labels and is_path_like(tok) and not self.exists(tok):
                errors.append(f"{where}: {tok} is not in a fresh clone and made by no earlier command")
        return errors


@pytest.fixture
def checker(monkeypatch, tmp_path, capfd):
    """A Checker whose --help runs in-process in an empty folder (nothing resolves against the checkout)."""
    from scene_kd.cli import main as cli_main
    from scene_kd.teachers.weights import weights_report

    monkeypatch.setenv("COLUMNS", "250")  # no flag wrapped in the help text
    monkeypatch.setenv("SCENE_KD_OFFLINE", "1")
    monkeypatch.delenv("SCENE_KD_CACHE", raising=False)  # the README names the default cache
    rows = weights_report()
    monkeypatch.chdir(tmp_path)
    capfd.readouterr()

    def help_text(verb: str | None, args: list[str]) -> tuple[int, str]:
        try:
            code = cli_main(([verb] if verb else []) + list(args) + ["--help"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out = capfd.readouterr()
        return code, out.out + out.err

    return Checker(tracked_files(), help_text, rows)


def _bash_blocks() -> list[Block]:
    return [b for b in parse_blocks(README.read_text()) if b.lang in ("bash", "sh", "shell")]


def test_every_readme_bash_block_says_how_it_is_tested():
    blocks = _bash_blocks()
    assert blocks
    for b in blocks:
        assert b.mode in ("check", "run", "slow"), f"README line {b.line}: no <!-- readme-test: ... --> above"
        for old, _ in b.subs:
            assert old in b.text, f"README line {b.line}: substitution {old!r} matches nothing in the block"


def test_every_readme_command_is_valid(checker):
    errors = []
    for b in _bash_blocks():
        for cmd in b.commands():
            errors += [f"README line {b.line}: {e}" for e in checker.check(cmd)]
    assert not errors, "\n".join(errors)


def test_readme_python_blocks_compile_and_import():
    for b in parse_blocks(README.read_text()):
        if b.lang != "python":
            continue
        for node in ast.walk(ast.parse(b.text, f"README.md:{b.line}")):
            if isinstance(node, ast.ImportFrom):
                mod = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(mod, alias.name), f"README line {b.line}: {node.module} has no {alias.name}"


@pytest.mark.parametrize("bad, problem", [
    ("scene-kd rnu data/pdal_sample_c.las --out r", "exits"),
    ("scene-kd run data/pdal_sample_c.las --out r --techer oracle-labels", "--techer"),
    ("scene-kd run data/pdal_sample_c.las --out r --config urbn", "exits"),
    ("scene-kd run data/pdal_sample_c.las --out r --teacher oracle-label", "exits"),
    ("scene-kd info data/pdal_sample_d.las", "not in a fresh clone"),
    ("scene-kd query runs/never_made building", "not in a fresh clone"),
    ("scene-kd batch 'tiles/*.laz' --out c --labels a,b", "not in a fresh clone"),
    ("scenekd info data/pdal_sample_c.las", "unknown program"),
    ("make demoo", "no target"),
    ("source .venv/bin/activate", "not in a fresh clone"),
    ("mkdir -p ~/.cache/scene_kd/weights/sam\ncurl -L -o ~/.cache/scene_kd/weights/sam/sam_vit_b_01ec64.pth "
     "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec6.pth", "expects"),
])
def test_the_check_fails_on_a_misspelt_command_or_a_missing_file(checker, bad, problem):
    errors = [e for cmd in split_commands(bad) for e in checker.check(cmd)]
    assert any(problem in e for e in errors), errors


def test_the_check_follows_files_made_by_earlier_commands(checker):
    good = ("make demo\nsource .venv/bin/activate\n"
            "scene-kd synth --kind urban --points 2000 --out u.ply\n"
            "scene-kd run u.ply --out runs/u --config ci --teacher oracle-labels\n"
            "scene-kd query runs/u car --export runs/u/car.ply\nscene-kd info runs/u/car.ply")
    errors = [e for cmd in split_commands(good) for e in checker.check(cmd)]
    assert not errors, errors


def _clone(tmp: Path) -> None:
    """``tmp`` as a fresh clone: the tracked top-level entries linked in (outputs land in ``tmp``)."""
    for top in sorted({f.split("/", 1)[0] for f in tracked_files()}):
        (tmp / top).symlink_to(ROOT / top)


def _run_blocks(modes: set[str], tmp: Path, monkeypatch) -> list[str]:
    """Run the README's blocks of ``modes`` (and every run block before them) in ``tmp``, in-process."""
    from scene_kd.cli import main as cli_main

    _clone(tmp)
    monkeypatch.chdir(tmp)
    monkeypatch.setenv("SCENE_KD_OFFLINE", "1")
    ran = []
    for b in _bash_blocks():
        if b.mode not in modes:
            continue
        for cmd in b.commands(substituted=True):
            env, cmd = split_env(cmd)
            assert cmd[0] in ("scene-kd", ".venv/bin/scene-kd"), \
                f"README line {b.line}: a {b.mode} block runs scene-kd commands only; mark it check: {cmd}"
            if cmd[1] in SERVERS:
                continue
            for k, v in env.items():
                monkeypatch.setenv(k, v)
            rc = cli_main(cmd[1:])
            assert rc == 0, f"README line {b.line}: {shlex.join(cmd)} exited {rc}"
            for i, a in enumerate(cmd[:-1]):
                if a in OUTPUT_FLAGS:
                    assert (tmp / cmd[i + 1]).exists(), f"README line {b.line}: {shlex.join(cmd)} made no {cmd[i + 1]}"
            ran.append(shlex.join(cmd))
    return ran


def test_readme_run_blocks_run(tmp_path, monkeypatch):
    ran = _run_blocks({"run"}, tmp_path, monkeypatch)
    assert any(c.startswith("scene-kd run ") for c in ran)
    assert (tmp_path / "labelled.las").exists()


@pytest.mark.slow
def test_readme_slow_blocks_run_in_a_shell(tmp_path):
    """The run and slow blocks through bash with `scene-kd` on PATH, as a user types them."""
    _clone(tmp_path)
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir()
    shim = bin_dir / "scene-kd"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m scene_kd.cli "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "SCENE_KD_OFFLINE": "1"}
    for b in _bash_blocks():
        if b.mode not in ("run", "slow"):
            continue
        script = "\n".join(shlex.join(c) for c in b.commands(substituted=True)
                           if not (c[0] == "scene-kd" and c[1] in SERVERS))
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"README line {b.line}:\n{script}\n{proc.stderr[-2000:]}"
