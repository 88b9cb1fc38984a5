"""The README's "Use it from the command line" section, command by command: every command it
shows names a real module, parses its arguments as written (the files it reads exist) and
answers ``--help``; preprocessing and synthesis run for real and print the line the README
shows (numbers aside)."""
from __future__ import annotations

import argparse
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Use it from the command line"


def section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start:end if end >= 0 else None]


def commands() -> list[list[str]]:
    """The section's commands (indented code lines starting ``python -m``), as argv lists."""
    return [shlex.split(line.strip()) for line in section().splitlines()
            if line.startswith("    python -m ")]


def shown_output(module: str) -> str:
    """The indented line the README shows right after ``module``'s command (what it prints)."""
    lines = section().splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(f"    python -m {module} "))
    return next(line.strip() for line in lines[i + 1:]
                if line.startswith("    ") and not line.startswith("    python -m "))


def numbers_masked(text: str) -> str:
    """Every number (and the README's placeholder ``N``) as ``#``."""
    return re.sub(r"[-+]?\d+(\.\d+)?|\bN\b", "#", text)


class Parsed(Exception):
    """Raised instead of running the job once the command line has been parsed."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        self.namespace = args


def run_module(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m MODULE ARGS...`` in this process (``argv`` = ``[python, -m, MODULE, ...]``)."""
    assert argv[:2] == ["python", "-m"], argv
    monkeypatch.setattr(sys, "argv", [argv[2], *argv[3:]])
    runpy.run_module(argv[2], run_name="__main__", alter_sys=False)


def test_the_section_walks_through_the_four_jobs() -> None:
    modules = [c[2] for c in commands()]
    assert modules[:4] == ["core.preprocess", "core.adapt", "core.synthesize", "eval.benchmark"]
    assert set(modules) == {"core.preprocess", "core.adapt", "core.synthesize", "eval.benchmark"}
    text = section()
    for preset in ("gpu", "cpu", "zerogpu", "tiny"):  # the presets table names every preset
        assert f"| `{preset}` |" in text
    from core.train.adapt import PRESETS
    from demo.config import app_presets

    assert set(app_presets()) == set(PRESETS) | {"zerogpu"}
    for name, cfg in app_presets().items():  # and says what each one is
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"| {cfg.res}² | {cfg.face_steps} + {cfg.mouth_steps} + {cfg.fuse_steps} |" in row


@pytest.mark.parametrize("argv", commands(), ids=lambda a: " ".join(a[2:4]))
def test_command_parses_as_written_and_answers_help(argv: list[str],
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)
    for arg in argv:  # every input under ../shared/data exists
        if arg.startswith("../shared/data/"):
            assert (ROOT / arg).is_file(), arg
    real_parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(real_parse(self, args, namespace))

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        with pytest.raises(Parsed):
            run_module(argv, monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        run_module([*argv[:3], "--help"], monkeypatch)
    assert exit_.value.code in (0, None)
    assert f"usage: python -m {argv[2]}" in capsys.readouterr().out


def _with_out(argv: list[str], out: Path) -> list[str]:
    i = argv.index("--out")
    return [*argv[:i + 1], str(out), *argv[i + 2:]]


def test_preprocess_command_runs_and_prints_what_the_readme_shows(may_cli) -> None:
    """The README's command is the session's preprocessing run (``may_cli``: the same clip,
    no option but ``--out``, at 256², what the command picks without a GPU)."""
    argv = next(c for c in commands() if c[2] == "core.preprocess")
    assert argv[3] == "../shared/data/clips/may_5s.mp4" and argv[4] == "--out" and len(argv) == 6
    printed = may_cli.printed.strip().splitlines()[-1]
    shown = shown_output("core.preprocess")
    assert numbers_masked(printed.replace(str(may_cli.out), "OUT")) == \
        numbers_masked(shown.replace(argv[5], "OUT"))
    assert "125 frames at 256²" in printed and "125 frames at 256²" in shown
    assert (may_cli.out / "manifest.json").is_file() and (may_cli.out / "frames.mp4").is_file()


def test_synthesize_command_runs_and_prints_what_the_readme_shows(
        tiny_avatar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The README's command with the suite's tiny avatar in place of the adapted one."""
    import av

    argv = next(c for c in commands() if c[2] == "core.synthesize")
    monkeypatch.chdir(ROOT)
    out = tmp_path / "talk.mp4"
    shown_avatar = argv[3]
    with pytest.raises(SystemExit) as exit_:
        run_module(_with_out([*argv[:3], str(tiny_avatar), *argv[4:]], out), monkeypatch)
    assert exit_.value.code == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    shown = shown_output("core.synthesize")
    assert shown_avatar.startswith("runs/avatars/")
    assert numbers_masked(printed.replace(str(out), "OUT")) == \
        numbers_masked(shown.replace(argv[argv.index("--out") + 1], "OUT"))
    with av.open(str(out)) as c:
        assert c.streams.audio and c.streams.video
        assert c.streams.video[0].frames == 200  # 8.0 s of audio at 25 fps
