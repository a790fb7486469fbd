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
import re
import shutil
import struct
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


MAX_CHAIN = 16            # layers of backing files followed before giving up
_PROTOCOL = re.compile(r"^[^/]*:")  # 'fat:…', 'file:…', 'json:…', 'nbd:…': a colon before the first '/'


def qcow2_names(path: Path) -> tuple[str, str, str]:
    """(backing file, its format, external data file) as a qcow2 header names them, read from the header
    itself: nothing the names point at is opened. Raises ValueError for a header that is not qcow2's."""
    with open(path, "rb") as f:
        head = f.read(104)
        if len(head) < 72 or head[:4] != QCOW2_MAGIC:
            raise ValueError("not a qcow2 header")
        version = struct.unpack(">I", head[4:8])[0]
        backing_offset, backing_size = struct.unpack(">QI", head[8:20])
        header_length = struct.unpack(">I", head[100:104])[0] if version >= 3 and len(head) >= 104 else 72
        if backing_size > 1023 or not 72 <= header_length <= 4096:
            raise ValueError("implausible qcow2 header")
        backing = ""
        if backing_offset:
            f.seek(backing_offset)
            backing = f.read(backing_size).decode("utf-8", "replace")
        backing_fmt, data_file = "", ""
        f.seek(header_length)
        for _ in range(64):  # header extensions: (type, length, data padded to 8 bytes), type 0 ends them
            raw = f.read(8)
            if len(raw) < 8:
                break
            kind, length = struct.unpack(">II", raw)
            if kind == 0 or length > 65536:
                break
            data = f.read((length + 7) & ~7)[:length]
            if kind == 0xE2792ACA:
                backing_fmt = data.decode("utf-8", "replace")
            elif kind == 0x44415441:
                data_file = data.decode("utf-8", "replace")
    return backing, backing_fmt, data_file


def _chain_names(path: Path, allowed_set: set[str]) -> str:
    """Walk the backing chain by reading qcow2 headers, before qemu-img opens anything: every name must be
    a plain file name (no protocol such as 'fat:' or 'file:', which QEMU would open as such), resolved
    against the folder of the image that names it, and listed under backing:."""
    current, seen = path, set()
    for _ in range(MAX_CHAIN):
        try:
            backing, backing_fmt, data_file = qcow2_names(current)
        except (OSError, ValueError) as e:
            return f"{current.name}: cannot read its qcow2 header ({e})"
        for what, name in (("external data file", data_file), ("backing file", backing)):
            if not name:
                continue
            if _PROTOCOL.match(name) or any(ord(c) < 32 for c in name):
                return (f"its {what} is {name[:200]!r}, a protocol name (a colon before the first '/') that QEMU "
                        "would open as such, not a file; flatten the image (qemu-img convert -O qcow2)")
            target = str((current.parent / name).resolve())
            if target not in allowed_set:
                return (f"its {what} is {name[:200]!r}, which the manifest does not list; a guest would read "
                        "that file as its disk. Flatten the image (qemu-img convert -O qcow2) or list the file "
                        "under backing: (inside the project)")
        if not backing:
            return ""
        if backing_fmt not in ("qcow2", "raw"):
            return ("its backing file has no recorded format, so QEMU would probe it; rebase it with -F "
                    "(qemu-img rebase -u -F qcow2 -b …) or flatten the image" if not backing_fmt else
                    f"its backing file's format is {backing_fmt[:40]!r}; only qcow2 and raw are accepted")
        current = Path((current.parent / backing).resolve())
        if str(current) in seen:
            return "its backing chain loops"
        seen.add(str(current))
        if backing_fmt == "raw":
            return ""
    return f"its backing chain is longer than {MAX_CHAIN} layers"


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
    allowed_set = {str(Path(a).resolve()) for a in allowed}
    problem = _chain_names(path, allowed_set)  # before qemu-img opens any file the image names
    if problem:
        return problem
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
    for layer in chain if isinstance(chain, list) else []:
        if not isinstance(layer, dict):
            return "qemu-img info gave no readable answer"
        driver = ((layer.get("format-specific") or {}).get("type") or layer.get("format") or "")
        if layer.get("filename") and _PROTOCOL.match(str(layer.get("filename"))) and not \
                str(layer.get("filename")).startswith("/"):
            return f"a layer of its chain is opened through a protocol ({str(layer.get('filename'))[:80]!r}), not as a file"
        if driver not in ("qcow2", "raw"):
            return f"a layer of its chain has the format {str(driver)[:40]!r}; only qcow2 and raw are accepted"
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
