"""Messages that lead (issue 23): the missing-weights error on short lines with the links and the oracle hint,
"did you mean" for misspelt flags and verbs (short forms first), and no run folder before the inputs are checked."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import pytest

from scene_kd.cli import COMMANDS, _default_args, _flag_groups, _known_flags, main, parse_verb

SAMPLE_C = Path(__file__).resolve().parents[1] / "data" / "pdal_sample_c.las"
SAM_B_URL = "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"  # segment-anything README
CLIP_HF = "https://huggingface.co/laion/CLIP-ViT-B-16-laion2B-s34B-b88K/"  # open_clip's hf_hub id of the default


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("SCENE_KD_OFFLINE", "1")


def test_missing_weights_message_is_short_lines_with_links_folders_and_the_oracle(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SCENE_KD_CACHE", str(cache))
    assert main(["run", str(SAMPLE_C), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.rstrip("\n")
    lines = err.replace(str(cache), "~/.cache/scene_kd").splitlines()  # the folder's own length aside
    assert 4 <= len(lines) <= 12 and max(map(len, lines)) <= 120, err  # the HF link alone is 101
    assert SAM_B_URL in err and CLIP_HF in err
    assert f"put it in {cache}/weights/sam/" in err
    assert f"put it in {cache}/weights/open_clip/ViT-B-16/laion2b_s34b_b88k/" in err
    assert "--teacher oracle-labels" in err and "--weights clip=PATH,sam=PATH" in err and "$SCENE_KD_CACHE" in err
    assert not (tmp_path / "r").exists()


def test_missing_weights_for_clip_grid_names_only_clip(tmp_path, capsys):
    assert main(["run", str(SAMPLE_C), "--out", str(tmp_path / "r"), "--teacher", "clip-grid"]) == 2
    err = capsys.readouterr().err
    assert CLIP_HF in err and SAM_B_URL not in err and "--weights clip=PATH (" in err
    assert not (tmp_path / "r").exists()


def test_missing_input_leaves_no_run_folder(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing.las"), "--out", str(tmp_path / "r"), "--teacher",
                 "oracle-labels"]) == 2
    err = capsys.readouterr().err
    assert "missing.las" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("argv", "expected"), [
    (["--techer", "oracle-labels"], "did you mean --teacher?"),
    (["--epoch", "3"], "did you mean --epochs?"),  # the short form, not --distill.epochs
    (["--prevew"], "did you mean --preview?"),
    (["--distill.epoch", "3"], "did you mean --distill.epochs?"),  # a long flag gets its long neighbour
    (["--label-flp=0.1"], "did you mean --label-flip?"),
])
def test_misspelt_flag_suggests_the_close_one(tmp_path, capsys, argv, expected):
    assert main(["run", "x.las", "--out", str(tmp_path / "r"), *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_misspelt_flag_suggests_even_when_it_leaves_a_required_one_missing(tmp_path, capsys):
    """`segment RUN --lables x`: --labels is then missing too; the one line names the misspelt flag, no tyro box
    (a fresh user got the box)."""
    assert main(["segment", str(tmp_path), "--lables", "ground"]) == 2
    err = capsys.readouterr().err
    assert "unknown option --lables for scene-kd segment; did you mean --labels?" in err
    assert len(err.strip().splitlines()) == 1, err


def test_misspelt_verb_suggests_the_close_one(capsys):
    assert main(["rnu", "x.las"]) == 2
    assert "did you mean run?" in capsys.readouterr().err
    assert main(["grasp-server"]) == 2
    assert "did you mean grasp-serve?" in capsys.readouterr().err
    assert main(["zzzz"]) == 2
    assert "did you mean" not in capsys.readouterr().err


def test_known_flags_cover_every_flag_tyro_makes():
    """The "did you mean" check must never refuse a flag tyro accepts: compare with tyro's own parser."""
    import tyro

    get_parser = getattr(tyro.extras, "get_parser", None)
    if get_parser is None:
        pytest.skip("this tyro has no extras.get_parser")
    for verb, modname in COMMANDS.items():
        mod = importlib.import_module(modname)
        default, _ = _default_args(mod, ["RUN"] if getattr(mod, "RUN_CONFIG_BASE", "") == "run" else [])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parser = get_parser(mod.Args, default=default, config=(tyro.conf.AvoidSubcommands,))
        theirs = {o for o in parser._option_string_actions if o.startswith("--")} - {"--help"}
        assert theirs == _known_flags(mod.Args, default), verb
        groups = {tuple(a.option_strings) for a in parser._actions if a.option_strings not in ([], ["-h", "--help"])}
        assert groups == set(_flag_groups(mod.Args, default)), verb  # aliases grouped with their long flag


def test_short_forms_are_aliases_listed_first_in_their_section(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= 100
    for short, long, section in [("--epochs", "--distill.epochs", "distill"), ("--views", "--render.preset", "render"),
                                 ("--weights", "--teacher.weights", "teacher")]:
        group = out[out.index(f"{section} options"):]
        assert f"{short} " in group and group.index(short) < group.index(long), short


def test_short_forms_keep_their_meanings():
    _, args = parse_verb("run", ["x.las", "--out", "r", "--epochs", "0"])
    assert args.distill.enabled is False and args.distill.epochs == 40  # 0: no student, epochs kept
    _, args = parse_verb("run", ["x.las", "--out", "r", "--config", "splat"])
    assert args.distill.enabled is False  # the splat preset trains no student ...
    _, args = parse_verb("run", ["x.las", "--out", "r", "--config", "splat", "--student", "gaussian-field"])
    assert args.distill.enabled is True and args.distill.student == "gaussian-field"  # ... unless one is chosen
    _, args = parse_verb("run", ["x.las", "--out", "r", "--teacher", "oracle-labels", "--label-flip", "0.2",
                                 "--views", "orbit", "--width", "64"])
    assert (args.teacher.name, args.teacher.label_flip, args.render.preset, args.render.width) == \
        ("oracle-labels", 0.2, "orbit", 64)


def _ragged(lines: list[str]) -> list[str]:
    """Help lines (rich's boxes on a terminal, or its plain layout elsewhere) broken before the line was full:
    the next line's first word of the same paragraph would have fitted (rich fills each line, so only a hard
    line break in the text leaves one)."""
    body = [(line[1:-1] if line[:1] in "│ " else "", len(line) - 2) for line in lines]
    out = []
    for (a, inner), (b, _) in zip(body, body[1:], strict=False):
        text, nxt = a.rstrip(), b.strip()
        if a.startswith("       ") and b.startswith("       ") and text.strip() and nxt \
                and len(text) + 1 + len(nxt.split()[0]) <= inner - 1:
            out.append(text.strip())
    return out


@pytest.mark.parametrize("verb", ["run", "render", "features", "distill", "batch"])
def test_help_fits_100_columns_in_filled_boxes(verb, capsys, monkeypatch):
    """``--help`` at COLUMNS=100: no line wider, each field's help a filled paragraph (no line ends where the
    source's docstring line ended), sections as their own boxes, short forms first."""
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert _ragged(lines) == []
    if verb == "run":
        titles = {line.strip(" ─╭╮-") for line in lines}
        assert {"render options", "teacher options", "distill options"} <= titles
        text = "\n".join(lines)
        assert "--views STR, --render.preset STR" in text and "--epochs INT, --distill.epochs INT" in text


def test_ragged_help_is_seen():
    """The check above fails on the help tyro printed before its docstrings were refilled."""
    box = ["│ --render.gsd [FLOAT [FLOAT ...]]" + " " * 65 + "│",
           "│       aerial: nadir levels as ground sampling distances, metres per pixel (any order; level 0" + " " * 5 + "│",
           "│       is the coarsest). 0.1 m/px is the finest default because a car (~4.5 x 1.8 m) then" + " " * 10 + "│"]
    want = ["aerial: nadir levels as ground sampling distances, metres per pixel (any order; level 0"]
    assert _ragged(box) == want
    assert _ragged([" " + line[1:-1] + " " for line in box]) == want  # rich's plain layout off a terminal
