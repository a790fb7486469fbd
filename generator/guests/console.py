"""What a guest prints on its console, read: the probe's markers and sections (free, meminfo,
memblock, zoneinfo), the lines that say why a guest died, and text made into one plain line. A guest
may print anything: numbers are bounded, escape sequences removed, and nothing here trusts a line."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..text import bounded_float, bounded_int, plain
from .probe import MARK

_MARK_RE = re.compile(rf"^{MARK} (\S+)(?: (.*))?$", re.M)
# out_of_memory() with nothing left to kill panics with "System is deadlocked on memory"
OOM_RE = re.compile(r"Out of memory|oom-kill|invoked oom-killer|deadlocked on memory", re.I)
PANIC_RE = re.compile(r"Kernel panic - not syncing[^\n]*")
MAX_MEMINFO_KEYS = 200  # /proc/meminfo has about 60; a guest printing more is not read further


@dataclass
class Console:
    """What the probe printed: markers in order, and the sections between begin/end markers."""

    text: str
    markers: dict = field(default_factory=dict)
    sections: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "Console":
        text = plain(text, keep_newlines=True)  # no escape sequence reaches a marker, a reason or a record
        c = cls(text)
        for m in _MARK_RE.finditer(text):
            name, value = m.group(1), (m.group(2) or "").strip()
            if name == "begin":
                end = text.find(f"{MARK} end {value}", m.end())
                if end != -1:
                    c.sections[value] = text[m.end():end].strip("\n")
            elif name != "end":
                c.markers.setdefault(name, value)
        return c

    def has(self, name: str) -> bool:
        return name in self.markers

    def number(self, name: str, index: int = 0) -> float | None:
        """A marker's number; None if missing or not a finite number (a guest may print anything)."""
        try:
            return bounded_float(self.markers[name].split()[index], 1e15)
        except (KeyError, IndexError):
            return None


def parse_free(text: str) -> dict | None:
    """`free -m` (procps or busybox) -> {'total': 961, 'used': …, 'available': …} in MiB."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    header = next((line for line in lines if "total" in line), None)
    mem = next((line for line in lines if line and line[0] == "Mem:"), None)
    if not header or not mem:
        return None
    names = [h.replace("/", "_") for h in header]
    values = {name: bounded_int(value) for name, value in zip(names, mem[1:])}
    return None if None in values.values() else values


def parse_meminfo(text: str) -> dict:
    """/proc/meminfo -> {'MemTotal': 983744, …} in KiB (HugePages_* counts stay counts)."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"([A-Za-z0-9_()]{1,40}):\s+([0-9]+)", line)
        if m and len(out) < MAX_MEMINFO_KEYS:
            value = bounded_int(m.group(2))  # a number too long to be a reading is left out
            if value is not None:
                out[m.group(1)] = value
    return out


def excerpt(text: str, limit: int = 40) -> list[str]:
    """The console's last lines, without the long meminfo dump, for the record.

    A panic's register dump can push the line that says why out of the tail: lines about running
    out of memory or panicking are kept in front of the tail (at most 10), marked by a '…' line.
    """
    keep = []
    skip = False
    text = plain(text.replace("\r", ""), keep_newlines=True)  # a full system's console colours its lines
    for line in text.splitlines():
        if line.startswith(f"{MARK} begin meminfo"):
            skip = True
        if not skip and line.strip():
            keep.append(line[:300])
        if line.startswith(f"{MARK} end meminfo"):
            skip = False
    tail = keep[-limit:]
    earlier = keep[:-limit] if len(keep) > limit else []
    key = [line for line in earlier if OOM_RE.search(line) or PANIC_RE.search(line)][:10]
    return key + ["…"] + tail if key else tail


def one_line(text: str) -> str:
    text = plain(text)
    text = re.sub(r"^\[\s*\d+\.\d+\]\s*", "", text.strip())
    # QEMU's own complaint, without libvirt's wrapper and QEMU's timestamp (keeps records diffable)
    qemu = re.search(r"qemu-system-\w+: (.*)$", text, re.S)
    if qemu:
        text = qemu.group(1)
    return " ".join(text.split())[:400]
