"""What tests share: the project's root, running the real CLI, and (in the modules beside this one)
fakes of a host and of libvirt, sample projects and records, and hostile inputs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"


def cli(*args, cwd=ROOT, env=None, timeout=120) -> subprocess.CompletedProcess:
    """The real CLI in a child process (`python -m generator ...`), its output captured."""
    return subprocess.run([sys.executable, "-m", "generator", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def one_line_error(out) -> str:
    """Exit 1 with one error line and no traceback (a sweep's '== experiment' heading aside)."""
    assert out.returncode == 1, (out.returncode, out.stderr)
    lines = [ln for ln in out.stderr.strip().splitlines() if not ln.startswith("== ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out.stderr, out.stderr
    return lines[0]


def git(cwd, *args, check=True) -> str:
    """git in `cwd` with a fixed identity; its stdout."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org"}
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, env=env,
                          check=check).stdout


def main(*args) -> subprocess.CompletedProcess:
    """The CLI's `main` in this process, its output captured: what `cli` checks, without starting Python
    (for unit tests; `cli` is the real entry point). Log records reach the captured stderr as the CLI's
    own logging would print them (in-process, pytest owns the root logger, so basicConfig does nothing)."""
    import contextlib
    import io
    import logging

    from generator.cli import main as cli_main

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli_main([str(a) for a in args])
    finally:
        root.removeHandler(handler)
    return subprocess.CompletedProcess(["generator", *args], code, out.getvalue(), err.getvalue())
