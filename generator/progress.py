"""Progress of a long sweep: a live bar on a terminal, plain log lines elsewhere (CI, pipes)."""
from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from .units import mib_label


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def describe(record: dict) -> str:
    """One line for a finished point: what the guest saw, or why it failed."""
    status = record.get("status")
    if status == "ok":
        free = (record.get("free_m") or {}).get("total")
        settled = record.get("memtotal_settled_kib")
        seen = f"free -m total {free} MiB" if free is not None else f"MemTotal {settled} KiB"
        took = (record.get("durations") or {}).get("total_s")
        return f"ok: {seen}" + (f" ({took:.0f} s)" if took else "")
    return f"{status}: {record.get('reason', '')}"


class Progress:
    """Counts points done / failed / left and estimates the time left from the finished ones."""

    def __init__(self, total: int = 0, stream: TextIO | None = None, live: bool | None = None):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.total = total
        self.done = self.failed = self.skipped = 0
        self.running: dict[str, float] = {}
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self._last_line = ""

    def start(self, total: int, skipped: int = 0) -> None:
        with self.lock:
            self.total, self.started = total, time.monotonic()
            if not total:
                self._print(f"nothing to measure: all {skipped} point(s) have a record (--force measures again)")
            elif skipped:
                self._print(f"{skipped} point(s) already measured; {total} to measure")
            else:
                self._print(f"{total} point(s) to measure")

    def begin(self, key: str) -> None:
        with self.lock:
            self.running[key] = time.monotonic()
            if not self.live:
                self._print(f"  start {key}")
            self._draw()

    def end(self, key: str, record: dict | None) -> None:
        with self.lock:
            self.running.pop(key, None)
            if record is None:
                self._print(f"  stopped {key} (not recorded)")
                return
            self.done += 1
            if record.get("status") != "ok":
                self.failed += 1
            mem = f"memory {mib_label(record['memory_mib'])}, currentMemory {mib_label(record['current_memory_mib'])}"
            self._print(f"  [{self.done}/{self.total}] {key} ({mem}) {describe(record)}")
            self._draw()

    def tick(self) -> None:
        """Redraw the live bar (elapsed time and ETA move even while no point finishes)."""
        with self.lock:
            self._draw()

    def skip_many(self, n: int) -> None:
        with self.lock:
            self.skipped += n
            self._draw()

    def note(self, text: str) -> None:
        with self.lock:
            self._print(text)
            self._draw()

    def eta(self) -> str:
        finished = self.done
        left = self.total - self.done - self.skipped
        if not finished or left <= 0:
            return "?"
        rate = (time.monotonic() - self.started) / finished
        return _duration(rate * left)

    def status_line(self) -> str:
        left = self.total - self.done - self.skipped
        width = 24
        filled = int(width * (self.done + self.skipped) / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        return (f"[{bar}] {self.done - self.failed} done, {self.failed} failed, {left} left, "
                f"{len(self.running)} running, elapsed {_duration(time.monotonic() - self.started)}, ETA {self.eta()}")

    def finish(self) -> None:
        with self.lock:
            if self.live and self._last_line:
                self.stream.write("\r\033[K")
            if self.total:
                self._print(f"measured {self.done} point(s), {self.failed} failed, in "
                            f"{_duration(time.monotonic() - self.started)}")
            self.stream.flush()

    def _print(self, text: str) -> None:
        if self.live and self._last_line:
            self.stream.write("\r\033[K")
            self._last_line = ""
        self.stream.write(text + "\n")
        self.stream.flush()

    def _draw(self) -> None:
        if not self.live or not self.total:
            return
        self._last_line = self.status_line()
        self.stream.write("\r\033[K" + self._last_line)
        self.stream.flush()
