"""Minimal points and records."""
from __future__ import annotations

from generator.plan import Point


def point(memory=1024, current=1024, repeat=1, **factors) -> Point:
    return Point.make("h", "g", repeat, memory_mib=memory, current_memory_mib=current, **factors)


def rec(status="ok", point=None, **extra) -> dict:
    """A minimal valid record of `point` (an ok one with the guest's two readings)."""
    point = point or Point.make("h", "g", memory_mib=1024, current_memory_mib=1024)
    readings = {"memtotal_settled_kib": 921600, "free_m": {"total": 900}} if status == "ok" else {}
    return {"experiment": "e", "host": point.host, "guest": point.guest, **point.factors, "repeat": point.repeat,
            "status": status, "reason": "", **readings, **extra}
