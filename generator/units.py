"""Sizes in libvirt's units and durations, parsed the way libvirt and sysadmins write them."""
from __future__ import annotations

import re

# libvirt's scaled integers (formatdomain "Memory Allocation"): k/KiB are 1024, KB is 1000, and so on.
_UNITS = {
    "b": 1, "bytes": 1,
    "kb": 1000, "k": 1024, "kib": 1024,
    "mb": 1000**2, "m": 1024**2, "mib": 1024**2,
    "gb": 1000**3, "g": 1024**3, "gib": 1024**3,
    "tb": 1000**4, "t": 1024**4, "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?\s*$")


def parse_size(text: object) -> int:
    """Return a size in bytes; raise ValueError with a readable reason."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise ValueError(f"{text!r} is not a size")
    if isinstance(text, (int, float)):
        raise ValueError(f"{text!r} has no unit; write it with one, e.g. '{text} MiB'")
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size (e.g. '1024 MiB', '16G', '512 KiB')")
    number, unit = m.groups()
    factor = _UNITS.get(unit.lower())
    # libvirt distinguishes KB (1000) from KiB/k (1024); "Kb" etc. stay ambiguous, treat by lowercase.
    if factor is None:
        raise ValueError(f"{text!r} has an unknown unit {unit!r} (use KiB, MiB, GiB, TiB, k, M, G, T, KB, MB, GB)")
    value = float(number) * factor
    if value != int(value):
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return int(value)


def parse_duration(text: object) -> float:
    """Seconds from 90, '90s', '5m', '1h', '500ms'."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a duration")
    if isinstance(text, (int, float)):
        if text <= 0:
            raise ValueError(f"{text!r} must be positive")
        return float(text)
    m = _DURATION_RE.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a duration (e.g. '90s', '5m')")
    number, unit = float(m.group(1)), (m.group(2) or "s")
    seconds = number * {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600}[unit]
    if seconds <= 0:
        raise ValueError(f"{text!r} must be positive")
    return seconds


def mib_label(mib: int) -> str:
    """'512 MiB', '1 GiB', '1536 MiB' - the label a sysadmin would write."""
    return f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"
