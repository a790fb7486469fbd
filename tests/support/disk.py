"""A small file system to fill: what a full disk does to the build and the sweep."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


def fill(mnt: Path, leave: int = 0) -> None:
    """Fill a file system, then give back `leave` bytes."""
    fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError:
        pass
    finally:
        os.close(fd)
    size = (mnt / "filler").stat().st_size
    os.truncate(mnt / "filler", max(0, size - leave))


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mnt)], capture_output=True,
                         text=True)
    assert out.returncode == 0, f"this test needs root to mount a tmpfs: {out.stderr}"
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])
