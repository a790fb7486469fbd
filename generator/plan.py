"""The plan: every point a manifest asks for, and where its record lives."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .manifest import Manifest


@dataclass(frozen=True, order=True)
class Point:
    """One measurement: a guest booted on a host with one memory / currentMemory pair, one repeat."""

    host: str
    guest: str
    memory_mib: int
    current_memory_mib: int
    repeat: int
    experiment: str = ""

    @property
    def key(self) -> str:
        """Stable, human-readable id, e.g. 'local/debian/m4096-c1024-r1'."""
        return f"{self.host}/{self.guest}/m{self.memory_mib}-c{self.current_memory_mib}-r{self.repeat}"

    @property
    def short(self) -> str:
        return f"m{self.memory_mib}-c{self.current_memory_mib}-r{self.repeat}"

    def record_path(self, results_dir: Path) -> Path:
        """<results>/<host>/<guest>/memory-<m>MiB-current-<c>MiB-r<k>.json"""
        return (Path(results_dir) / self.host / self.guest /
                f"memory-{self.memory_mib}MiB-current-{self.current_memory_mib}MiB-r{self.repeat}.json")


def points(manifest: Manifest) -> list[Point]:
    """The cross product hosts x guests x memory x currentMemory x repeats, currentMemory <= memory.

    Ordered so that an interrupted sweep has covered the whole range coarsely: repeat 1 of every
    size first, smallest memory first within it.
    """
    out = []
    for repeat in range(1, manifest.sweep.repeats + 1):
        for memory in sorted(manifest.sweep.memory):
            for current in sorted(manifest.sweep.current_memory):
                if current > memory:
                    continue
                for host in manifest.hosts:
                    for guest in manifest.guests:
                        out.append(Point(host.name, guest.name, memory, current, repeat, manifest.experiment))
    return out


def skipped_pairs(manifest: Manifest) -> list[tuple[int, int]]:
    """(memory, currentMemory) pairs left out because currentMemory would exceed memory."""
    return [(m, c) for m in manifest.sweep.memory for c in manifest.sweep.current_memory if c > m]


def select(all_points: list[Point], only: list[str] | None) -> list[Point]:
    """Points whose key matches any --only glob ('local/*', '*/m4096-*', 'm1024-c1024-r1')."""
    if not only:
        return all_points
    chosen = [p for p in all_points
              if any(fnmatch.fnmatch(p.key, pat) or fnmatch.fnmatch(p.short, pat) or
                     fnmatch.fnmatch(p.key, f"*{pat}*") for pat in only)]
    if not chosen:
        raise UserError(f"--only {' '.join(only)} matches no point; point keys look like "
                        f"'{all_points[0].key}' (run 'status' to list them)")
    return chosen


def results_dir(manifest: Manifest, override: str | None = None) -> Path:
    """Where records go: --results DIR/<experiment>, else the manifest's 'results' folder."""
    if override:
        return Path(override) / manifest.experiment
    return Path(manifest.results)
