"""The docs do not drift from the code: every command README.md and docs/*.md show runs a module or
script that exists, with flags its parser accepts, and every model version they name is the shipped one.

Commands are read from fenced code blocks and from inline code spans that start like a command
(``python ...``, ``.venv/bin/python ...``, ``s2cnet ...``, ``ray submit ...``). Parsers are built
in-process: ``build_parser()`` where a module has one, else the parser its ``main``/``parse_args``
builds, caught at its first ``parse_args`` call before anything runs; a subprocess ``--help`` only
when neither works.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import inspect
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROJECT_PACKAGES = ("s2cnet", "pipelines", "serve", "tune", "benchmarks")
VERSION = re.compile(r"\bs2cnet-[0-9a-f]{12}\b")
FLAG = re.compile(r"^--[A-Za-z][\w-]*")
WRAPPERS = {"time", "nice", "sudo", "exec", "timeout", "env"}


@dataclass(frozen=True)
class Command:
    where: str  # file:line
    target: str  # "module:NAME" or "script:PATH" or "file:PATH"
    args: tuple[str, ...]


# -- reading the commands ----------------------------------------------------------------------------
def _blocks(text: str) -> list[tuple[int, str]]:
    """(line number, logical line) of every fenced shell block, continuation lines joined; the body of a
    heredoc is skipped, and so are the commands that run a file a heredoc of the block wrote."""
    out, fence, buf, start, heredoc, written = [], None, "", 0, None, set()
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s.startswith("```"):
            fence, written = (None if fence else s[3:].strip() or "sh"), set()
            continue
        if fence not in {"sh", "bash", "shell", "console"}:
            continue
        if heredoc is not None:
            heredoc = None if s == heredoc else heredoc
            continue
        if m := re.search(r"<<-?\s*['\"]?(\w+)['\"]?", s):
            heredoc = m.group(1)
            written.update(re.findall(r">\s*(\S+)", s[:m.start()]))
        if not buf:
            start = n
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        if not any(w in (buf + s).split() for w in written):
            out.append((start, buf + s))
        buf = ""
    return out


def _spans(text: str) -> list[tuple[int, str]]:
    """(line number, text) of inline code spans outside fenced blocks."""
    out, fenced = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out += [(n, m) for m in re.findall(r"`([^`\n]+)`", line)]
    return out


def _tokens(line: str) -> list[str] | None:
    line = re.sub(r"^\s*\$\s+", "", line)
    try:
        return shlex.split(line, comments=True)
    except ValueError:
        return None


def _segments(tokens: list[str]) -> list[list[str]]:
    segs, cur = [], []
    for t in tokens:
        if t in {"&&", "||", ";", "|"}:
            segs.append(cur)
            cur = []
        else:
            cur.append(t)
    return [s for s in [*segs, cur] if s]


def _strip_prefix(seg: list[str]) -> list[str]:
    """Drops environment assignments and wrappers (``OMP_NUM_THREADS=1 nice -n 19 time ...``)."""
    i = 0
    while i < len(seg):
        t = seg[i]
        if re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", t):
            i += 1
        elif t in WRAPPERS:
            i += 1
            while i < len(seg) and (seg[i].startswith("-") or seg[i].isdigit()):
                i += 1  # nice -n 19, timeout 600
        else:
            break
    return seg[i:]


def _command(seg: list[str], where: str) -> Command | None:
    seg = _strip_prefix(seg)
    if not seg:
        return None
    prog, rest = Path(seg[0]).name, seg[1:]
    if re.fullmatch(r"python(3(\.\d+)?)?", prog):
        if len(rest) >= 2 and rest[0] == "-m":
            return Command(where, f"module:{rest[1]}", tuple(rest[2:]))
        if rest and rest[0].endswith(".py"):
            return Command(where, f"script:{rest[0]}", tuple(rest[1:]))
        return None
    if prog == "s2cnet":
        return Command(where, "module:s2cnet.cli", tuple(rest))
    if prog == "ray" and rest[:1] == ["submit"]:
        script = next((t for t in rest if t.endswith(".py")), None)
        args = rest[rest.index("--") + 1:] if "--" in rest else []
        return Command(where, f"script:{script}", tuple(args)) if script else None
    if prog == "bash" and rest and rest[0].endswith(".sh"):
        return Command(where, f"file:{rest[0]}", ())
    if prog == "serve" and rest[:1] in (["run"], ["deploy"]) and len(rest) > 1 and rest[1].endswith((".yaml", ".yml")):
        return Command(where, f"file:{rest[1]}", ())
    return None


def _looks_like_command(span: str) -> bool:
    """An inline span that runs something (``python -m X``, ``s2cnet crop ...``), not one that names a path."""
    return bool(re.match(r"(\$ )?([A-Z_]+=\S+ )*((nice -n \d+|time) )*(\S*/)?(python3?|s2cnet|ray submit|bash)\s+\S", span))


def documented_commands() -> list[Command]:
    out = []
    for doc in DOCS:
        text = doc.read_text()
        rel = doc.relative_to(ROOT)
        lines = _blocks(text) + [(n, s) for n, s in _spans(text) if _looks_like_command(s)]
        for n, line in lines:
            tokens = _tokens(line)
            if not tokens:
                continue
            for seg in _segments(tokens):
                cmd = _command(seg, f"{rel}:{n}")
                if cmd:
                    out.append(cmd)
    return out


def flags_of(args: tuple[str, ...]) -> list[str]:
    """Long options shown, placeholders' brackets and '=value' removed: ``[--samples N]`` -> ``--samples``."""
    found = []
    for a in args:
        m = FLAG.match(a.lstrip("[(|"))
        if m:
            found.append(m.group(0))
    return found


# -- the parsers -------------------------------------------------------------------------------------
class _Caught(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__("parser caught")
        self.parser = parser


def _load(target: str):
    kind, name = target.split(":", 1)
    if kind == "module":
        return importlib.import_module(name)
    path = ROOT / name
    module_name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _caught_parser(module) -> argparse.ArgumentParser | None:
    """The parser a module's ``main``/``parse_args`` builds, stopped at its first parse call."""
    entry = getattr(module, "build_parser", None)
    if entry is not None:
        return entry()
    if "ArgumentParser(" not in inspect.getsource(module):  # a main that parses nothing would simply run
        return None
    for name in ("parse_args", "main"):
        fn = getattr(module, name, None)
        if fn is None:
            continue

        def catch(self, *a, **k):
            raise _Caught(self)

        saved = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
        argparse.ArgumentParser.parse_args = argparse.ArgumentParser.parse_known_args = catch
        try:
            try:
                fn([])
            except TypeError:
                fn()
        except _Caught as c:
            return c.parser
        finally:
            argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args = saved
    return None


def _options(parser: argparse.ArgumentParser, args: tuple[str, ...]) -> set[str]:
    """Option strings of the parser, or of the subcommand the args name."""
    opts = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub = next((a for a in args if a in action.choices), None)
            if sub is not None:
                return opts | set(action.choices[sub]._option_string_actions)
    return opts


@functools.cache
def help_text(target: str) -> str:
    """``--help`` of a target in a subprocess: the fallback when no parser can be built in-process."""
    kind, name = target.split(":", 1)
    argv = ["-m", name] if kind == "module" else [str(ROOT / name)]
    proc = subprocess.run([sys.executable, *argv, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{target} --help failed: {proc.stderr[-1500:]}"
    return proc.stdout


@functools.cache
def parser_for(target: str) -> argparse.ArgumentParser | None:
    with contextlib.redirect_stdout(None), contextlib.redirect_stderr(None):
        try:
            return _caught_parser(_load(target))
        except Exception:  # noqa: BLE001 - any failure here falls back to the subprocess
            return None


def accepted(target: str, args: tuple[str, ...]) -> set[str] | str:
    parser = parser_for(target)
    if parser is not None:
        return _options(parser, args)
    return help_text(target)


COMMANDS = documented_commands()
PROJECT = [c for c in COMMANDS if c.target.startswith("script:")
           or c.target.split(":", 1)[1].split(".")[0] in PROJECT_PACKAGES]


def test_the_docs_show_commands_at_all():
    targets = {c.target for c in COMMANDS}
    assert {"script:pipelines/crop_bucket.py", "script:tune/sweep.py", "module:s2cnet.cli",
            "module:s2cnet.training.train", "module:s2cnet.training.evaluate"} <= targets, sorted(targets)


def test_every_documented_module_and_script_exists():
    missing = []
    for c in COMMANDS:
        kind, name = c.target.split(":", 1)
        if kind == "module":
            try:
                found = importlib.util.find_spec(name) is not None
            except ModuleNotFoundError:
                found = False
        else:
            found = (ROOT / name).is_file()
        if not found:
            missing.append(f"{c.where}: {name}")
    assert not missing, "documented commands name what does not exist:\n" + "\n".join(missing)


def test_every_documented_flag_is_accepted():
    wrong = []
    for c in PROJECT:
        if c.target.startswith("file:"):
            continue
        known = accepted(c.target, c.args)
        for flag in flags_of(c.args):
            ok = flag in known if isinstance(known, set) else re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", known)
            if not ok:
                wrong.append(f"{c.where}: {c.target.split(':', 1)[1]} {flag}")
    assert not wrong, "documented flags the parsers do not accept:\n" + "\n".join(sorted(set(wrong)))


def test_model_versions_shown_are_the_shipped_one():
    from s2cnet.checkpoint import weights_version
    from s2cnet.cropper import DEFAULT_WEIGHTS

    shipped = weights_version(DEFAULT_WEIGHTS)
    stale = [f"{doc.relative_to(ROOT)}: {v}" for doc in DOCS for v in VERSION.findall(doc.read_text()) if v != shipped]
    assert not stale, f"the shipped model is {shipped}; the docs show:\n" + "\n".join(stale)


@pytest.mark.parametrize("doc", ["README.md", "docs/tune.md"])
def test_the_smoke_sweep_duration_is_the_one_measured(doc):
    from tune.sweep import SMOKE_TIME

    text = (ROOT / doc).read_text()
    assert SMOKE_TIME in text, f"{doc} should give the smoke sweep's measured duration, {SMOKE_TIME!r}"
