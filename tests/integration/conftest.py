"""Integration tests: real guests on libvirt's embedded QEMU driver, through the real CLI."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def embed_env(tmp_path_factory):
    """One probe cache and one short embedded-driver root for the whole session."""
    cache = tmp_path_factory.mktemp("cache")
    root = Path(tempfile.mkdtemp(prefix="mbt-", dir="/tmp"))
    env = dict(os.environ, MEMBALLOON_CACHE=str(cache), MEMBALLOON_EMBED_ROOT=str(root), PYTHONUNBUFFERED="1")
    yield env
    for pid in qemu_pids(root):
        os.kill(pid, 9)
    shutil.rmtree(root, ignore_errors=True)


def qemu_pids(root: Path | str, also: str = "") -> list[int]:
    """QEMU processes started under an embedded root (their command lines name it), optionally only
    those whose command line also holds `also` (e.g. a point's '-m2048-')."""
    out = subprocess.run(["pgrep", "-f", f"qemu-system.*{root}"], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    if also:
        def cmdline(pid: int) -> str:
            try:
                return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                return ""
        pids = [p for p in pids if also in cmdline(p)]
    return pids


def cli(env, *args, timeout=900):
    return subprocess.run([sys.executable, "-m", "generator", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def start_cli(env, *args):
    return subprocess.Popen([sys.executable, "-m", "generator", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
