"""The plan: every point a manifest asks for, and where its record lives."""
from __future__ import annotations

import fnmatch
import itertools
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .manifest import FACTORS, Manifest


@dataclass(frozen=True, order=True)
class Point:
    """One measurement: a guest booted on a host with one value of every factor, one repeat.

    Factor values are attributes by their names (point.memory_mib); keys and record paths are made
    from the factors' declarations (manifest.FACTORS), leaving out values that are the default."""

    host: str
    guest: str
    values: tuple          # one value per factor, in FACTORS order
    repeat: int
    experiment: str = ""

    @classmethod
    def make(cls, host: str, guest: str, repeat: int = 1, experiment: str = "", **values) -> "Point":
        missing = [f.name for f in FACTORS if f.name not in values and f.default is None]
        if missing:
            raise TypeError(f"Point.make needs {', '.join(missing)}")
        return cls(host, guest, tuple(values.get(f.name, f.default) for f in FACTORS), repeat, experiment)

    def __getattr__(self, name: str):
        for f, v in zip(FACTORS, self.__dict__.get("values", ())):
            if f.name == name:
                return v
        raise AttributeError(name)

    @property
    def factors(self) -> dict:
        return {f.name: v for f, v in zip(FACTORS, self.values)}

    @property
    def short(self) -> str:
        """'m4096-c1024-r1'; a factor at its default is left out ('m4096-c1024-virtio-mem-r1' when not)."""
        return "-".join([f.key(v) for f, v in zip(FACTORS, self.values) if f.shown(v)] + [f"r{self.repeat}"])

    @property
    def key(self) -> str:
        """Stable, human-readable id, e.g. 'local/debian/m4096-c1024-r1'."""
        return f"{self.host}/{self.guest}/{self.short}"

    def record_path(self, results_dir: Path) -> Path:
        """<results>/<host>/<guest>/memory-<m>MiB-current-<c>MiB[-<factor>…]-r<k>.json"""
        parts = [f.path(v) for f, v in zip(FACTORS, self.values) if f.shown(v)]
        return Path(results_dir) / self.host / self.guest / ("-".join(parts + [f"r{self.repeat}"]) + ".json")


def points(manifest: Manifest) -> list[Point]:
    """Hosts x guests x every factor's values x repeats, without points where currentMemory exceeds memory.

    Ordered so that an interrupted sweep has covered the whole range coarsely: repeat 1 of every
    point first, smallest memory first within it.
    """
    out = []
    combos = list(itertools.product(*[sorted(getattr(manifest.sweep, f.sweep)) for f in FACTORS]))
    for repeat in range(1, manifest.sweep.repeats + 1):
        for values in combos:
            factors = dict(zip((f.name for f in FACTORS), values))
            if factors["current_memory_mib"] > factors["memory_mib"]:
                continue
            for host in manifest.hosts:
                for guest in manifest.guests:
                    if guest.hosts and host.name not in guest.hosts:
                        continue
                    out.append(Point(host.name, guest.name, tuple(values), repeat, manifest.experiment))
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
