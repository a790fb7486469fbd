"""Progress of a long sweep: a live bar on a terminal, plain log lines elsewhere (CI, pipes)."""
from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from .text import plain
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


def balloon_state(live: dict) -> str | None:
    """'balloon 63.1 of 127 GiB given back, 0.27 GiB/s' for a point whose balloon is on its way, from the
    samples its measurement keeps; None before it moves or once it is there (nothing worth saying)."""
    timeline, memory, target = live.get("timeline"), live.get("memory_kib"), live.get("target_kib")
    if not timeline or not memory or target is None or memory <= target:
        return None
    samples = [(t, a) for t, a, *_ in list(timeline[-40:]) if isinstance(a, int)]
    if not samples:
        return None
    t1, a1 = samples[-1]
    if a1 >= memory or a1 <= target:
        return None
    gib = 1024 * 1024
    total = f"{(memory - target) / gib:.1f}".removesuffix(".0")
    text = f"balloon {(memory - a1) / gib:.1f} of {total} GiB given back"
    t0, a0 = samples[0]
    if t1 - t0 >= 5 and a0 > a1:
        text += f", {(a0 - a1) / gib / (t1 - t0):.2f} GiB/s"
    return text


def balloon_fraction(live: dict) -> float | None:
    """How much of its way a running point's balloon has gone (0 to 1), from its samples; None
    before it has any."""
    timeline, memory, target = live.get("timeline"), live.get("memory_kib"), live.get("target_kib")
    if not timeline or not memory or target is None or memory <= target:
        return None
    samples = [a for _, a, *_ in list(timeline[-5:]) if isinstance(a, int)]
    if not samples:
        return None
    return min(1.0, max(0.0, (memory - samples[-1]) / (memory - target)))


class Progress:
    """Counts points done / failed / left and estimates the time left from the finished ones."""

    def __init__(self, total: int = 0, stream: TextIO | None = None, live: bool | None = None):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.total = total
        self.done = self.failed = self.skipped = 0
        self.running: dict[str, dict] = {}   # key -> {"since", "said", and what the point fills in: see begin}
        self.started = time.monotonic()
        self.first_begin: float | None = None  # the ETA counts from here: set-up (a canary boot) is not a point
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

    def begin(self, key: str) -> dict:
        """A point starts. Returns a dict the measurement may fill while it runs, read at each tick:
        'timeline' (the record's balloon samples, [seconds, actual KiB, …]), 'memory_kib' and
        'target_kib' (where the balloon starts and where it is going)."""
        with self.lock:
            if self.first_begin is None:
                self.first_begin = time.monotonic()
            now = time.monotonic()
            live: dict = {"since": now, "said": now}
            self.running[key] = live
            if not self.live:
                self._print(f"  start {key}")
            self._draw()
            return live

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

    def tick(self, now: float | None = None) -> None:
        """Redraw the live bar (elapsed time and ETA move even while no point finishes). Without a
        terminal, a point that has run for a while says how far its balloon has got, once a minute."""
        with self.lock:
            now = time.monotonic() if now is None else now
            if not self.live:
                for key, live in self.running.items():
                    if now - live["said"] >= self.EVERY:
                        live["said"] = now
                        state = balloon_state(live)
                        if state:
                            self._print(f"  ... {key}: {_duration(now - live['since'])}, {state}")
            self._draw()

    EVERY = 60.0  # seconds between two progress lines of one point

    def skip_many(self, n: int) -> None:
        with self.lock:
            self.skipped += n
            self._draw()

    def note(self, text: str) -> None:
        with self.lock:
            self._print(text)
            self._draw()

    def eta(self) -> str:
        """From the finished points; before one finishes, from how far the running points' balloons
        have got (a single long point is not 'ETA ?' for minutes)."""
        finished = self.done
        left = self.total - self.done - self.skipped
        if left <= 0:
            return "?"
        now = time.monotonic()
        if finished:
            rate = (now - (self.first_begin or self.started)) / finished
            return _duration(rate * left)
        guesses = []
        for live in self.running.values():
            fraction = balloon_fraction(live)
            if fraction is not None and fraction >= 0.02:
                guesses.append((now - live["since"]) / fraction)
        if not guesses:
            return "?"
        per_point = max(guesses)
        running = len(self.running)
        remaining = max(0.0, per_point - min(now - live["since"] for live in self.running.values()))
        queued = max(0, left - running)
        return "~" + _duration(remaining + per_point * queued / max(1, running))

    def status_line(self) -> str:
        left = self.total - self.done - self.skipped
        width = 24
        filled = int(width * (self.done + self.skipped) / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        line = (f"[{bar}] {self.done - self.failed} done, {self.failed} failed, {left} left, "
                f"{len(self.running)} running, elapsed {_duration(time.monotonic() - self.started)}, ETA {self.eta()}")
        oldest = min(self.running.items(), key=lambda kv: kv[1]["since"], default=None)
        state = balloon_state(oldest[1]) if oldest else None
        return line + (f"; {oldest[0]}: {state}" if state else "")

    def finish(self) -> None:
        with self.lock:
            if self.live and self._last_line:
                self.stream.write("\r\033[K")
            if self.total:
                self._print(f"measured {self.done} point(s), {self.failed} failed, in "
                            f"{_duration(time.monotonic() - self.started)}")
            self.stream.flush()

    def _print(self, text: str) -> None:
        """One line; what it says may come from a guest or a record, so control characters are removed
        (the only ones written are the bar's own carriage return and erase-line)."""
        if self.live and self._last_line:
            self.stream.write("\r\033[K")
            self._last_line = ""
        self.stream.write(plain(text) + "\n")
        self.stream.flush()

    def _draw(self) -> None:
        if not self.live or not self.total:
            return
        self._last_line = plain(self.status_line())
        self.stream.write("\r\033[K" + self._last_line)
        self.stream.flush()
