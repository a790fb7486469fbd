"""User disk images, inspected before any guest sees them.

A qcow2 image can name other files: a backing file (the guest then reads it as its disk) and an
external data file. A manifest may come from someone else, so an image that points at a host file
would hand that file to a guest, whose words then reach the records and the published page. Each
image is inspected with `qemu-img info --backing-chain` with its format given, never probed (a raw
disk whose guest wrote qcow2's magic into its first sector must stay raw), and every file its chain
names must be one the manifest lists and that lies inside the project.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

MAX_IMAGE_BYTES = 64 * 1024 ** 3  # hashed and copied whole to a remote host: larger is refused
FORMATS = ("qcow2", "raw")
QCOW2_MAGIC = b"QFI\xfb"


def format_for(path: str | Path, declared: str) -> tuple[str | None, str]:
    """(format, problem): the declared format, or for 'auto' the one the file's name says."""
    if declared in FORMATS:
        return declared, ""
    name = Path(path).name.lower()
    with open(path, "rb") as f:
        looks_qcow2 = f.read(4) == QCOW2_MAGIC
    if name.endswith(".qcow2"):
        return "qcow2", ""
    if name.endswith((".raw", ".img")):
        if looks_qcow2:
            return None, ("starts like a qcow2 image but is named like a raw one; set format: qcow2 if it is one "
                          "(a raw disk is never probed: its guest could have written that magic)")
        return "raw", ""
    return None, "cannot tell its format from the name (.qcow2, .raw or .img); set format: qcow2 or raw"


def inspect(path: str | Path, fmt: str, allowed: list[str] | tuple = ()) -> str:
    """'' when the image may be booted, else what is wrong (one sentence).

    allowed: resolved paths of backing and data files the manifest names (inside the project)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        return f"cannot read it ({e.strerror})"
    if st.st_size > MAX_IMAGE_BYTES:
        return (f"is {st.st_size / 1024 ** 3:.0f} GiB (apparent size); images are hashed and copied whole to "
                f"remote hosts, so at most {MAX_IMAGE_BYTES // 1024 ** 3} GiB: convert it to qcow2 "
                "(qemu-img convert -O qcow2), which stores only what is used")
    if fmt == "raw":
        return ""  # a raw file names no other file
    qemu_img = shutil.which("qemu-img")
    if not qemu_img:
        return "qemu-img is needed to inspect qcow2 images and is not installed (Debian: qemu-utils; here: make deps)"
    try:
        out = subprocess.run([qemu_img, "info", "--backing-chain", "--output=json", "-U", "-f", fmt, "--", str(path)],
                             capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"qemu-img info failed ({type(e).__name__})"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1][:200]
        return f"is not a valid {fmt} image (qemu-img: {last})"
    try:
        chain = json.loads(out.stdout)
    except ValueError:
        return "qemu-img info gave no readable answer"
    if isinstance(chain, dict):
        chain = [chain]
    allowed_set = {str(Path(a).resolve()) for a in allowed}
    for layer in chain if isinstance(chain, list) else []:
        if not isinstance(layer, dict):
            return "qemu-img info gave no readable answer"
        data_file = (((layer.get("format-specific") or {}).get("data") or {}).get("data-file"))
        named = [("backing file", layer.get("full-backing-filename") or layer.get("backing-filename")),
                 ("external data file", data_file)]
        for what, target in named:
            if not target:
                continue
            resolved = str(Path(str(target)).resolve()) if not str(target).startswith(("json:", "nbd:", "http")) \
                else str(target)
            if resolved not in allowed_set:
                return (f"its {what} is {str(target)[:200]!r}, which the manifest does not list; a guest would read "
                        "that file as its disk. Flatten the image (qemu-img convert -O qcow2) or list the file "
                        "under backing: (inside the project)")
        if layer.get("backing-filename") and not layer.get("backing-filename-format"):
            return ("its backing file has no recorded format, so QEMU would probe it; rebase it with -F "
                    "(qemu-img rebase -u -F qcow2 -b …) or flatten the image")
    return ""
