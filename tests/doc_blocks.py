"""Reading and running the code blocks of README.md and docs/*.md as a user would copy them.

A block that cannot run here is marked in its document by the line right above its fence:
`<!-- not run: what it needs, and how long it takes -->`. Every other bash, python and toml block runs in a test.
Bash lines run as a shell would run them (environment assignments, `~`, globs), with `fastervlm` called in this
process for speed; python blocks run as scripts in a fresh process.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- not run: (?P<reason>.*?) -->\s*$")
FENCE = re.compile(r"^```(?P<lang>\w*)\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    """1-based line of the opening fence."""
    lang: str
    text: str
    not_run: str | None
    """The marker's reason, or None for a block that runs in a test."""

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, with their not-run markers."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, start, lang = [], None, ""
    for number, line in enumerate(lines, start=1):
        fence = FENCE.match(line)
        if fence and start is None:
            start, lang = number, fence["lang"]
        elif line.strip() == "```" and start is not None:
            marker = MARKER.match(lines[start - 2]) if start >= 2 else None
            found.append(Block(path, start, lang, "\n".join(lines[start:number - 1]) + "\n",
                               marker["reason"] if marker else None))
            start = None
    return found


COMMAND = re.compile(r"^\s*([A-Z_][A-Z0-9_]*=\S*\s+)*(fastervlm|python3?|pip|torchrun|apt-get)\b")
"""A line of a block that is a command (plain blocks also hold outputs and layouts)."""


def command_lines(text: str, *, commands_only: bool = True) -> list[str]:
    """A block's lines with continuations joined, comments and blank lines dropped; `commands_only`: also the
    lines that are no command (outputs, layouts)."""
    joined = text.replace("\\\n", " ")
    lines = [raw for raw in joined.splitlines() if COMMAND.match(raw) or not commands_only]
    return [line for line in (shlex.join(shlex.split(raw, comments=True)) for raw in lines) if line]


def split_command(line: str) -> tuple[dict[str, str], list[str]]:
    """(leading VAR=value assignments, the words after them)."""
    words = shlex.split(line)
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    return env, words


def is_placeholder(words: list[str]) -> bool:
    """A line that shows a shape rather than a command: `...` for flags, `<name>` for a value."""
    return "..." in words or re.search(r"<[a-z][^>]*>", " ".join(words)) is not None


def shell_words(words: list[str], cwd: Path) -> list[str]:
    """What bash would pass: `~` expanded, globs matched in `cwd` (a pattern that matches nothing stays as is)."""
    out = []
    for word in words:
        word = os.path.expanduser(word)
        if any(ch in word for ch in "*?["):
            matches = sorted(glob.glob(word, root_dir=cwd))
            out.extend(matches or [word])
        else:
            out.append(word)
    return out


@contextlib.contextmanager
def _inside(cwd: Path, env: dict[str, str]) -> Iterator[None]:
    before_cwd, before_env = os.getcwd(), {key: os.environ.get(key) for key in env}
    os.chdir(cwd)
    os.environ.update(env)
    try:
        yield
    finally:
        os.chdir(before_cwd)
        for key, value in before_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_bash(block: Block, cwd: Path) -> list[str]:
    """Run every line of a bash block in `cwd`; each must be a `fastervlm` command that exits 0. Returns their
    stdout."""
    from fastervlm.cli import main

    outputs = []
    for line in command_lines(block.text, commands_only=False):
        env, words = split_command(line)
        assert words[:1] == ["fastervlm"], f"{block.where()}: only fastervlm commands run here: {line}"
        stdout, stderr = io.StringIO(), io.StringIO()
        with _inside(cwd, env), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(shell_words(words[1:], cwd))
            except SystemExit as exit_:  # argparse refused the line
                code = exit_.code
        assert code == 0, f"{block.where()}: `{line}` exited {code}:\n{stderr.getvalue()[-3000:]}"
        outputs.append(stdout.getvalue())
    return outputs


def run_python(block: Block, cwd: Path, *, replace: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Run a python block as a script in `cwd` (with `replace`'s substitutions, which the caller must name); its
    stdout."""
    text = block.text
    for old, new in (replace or {}).items():
        assert old in text, f"{block.where()}: {old!r} is not in the block"
        text = text.replace(old, new)
    script = cwd / f"example_{block.line}.py"
    script.write_text(text, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{block.where()}:\n{done.stderr[-3000:]}"
    return done.stdout


def sandbox(folder: Path, tiny_checkpoint: Path) -> Path:
    """A folder laid out as the documents assume: `ckpts/Video-LLaVA-7B` and `ckpts/LanguageBind_Video_merge` (the
    tiny random checkpoint stands in for both; its outputs say so) and `clip.mp4` (a synthetic video)."""
    from fastervlm.tiny.video import write_synthetic_video

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ckpts").symlink_to(tiny_checkpoint.parent, target_is_directory=True)
    write_synthetic_video(folder / "clip.mp4")
    return folder
