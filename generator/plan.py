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
        missing = [f.name for f in FACTORS if f.name not in values and f.required]
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
            if factors["current_memory_mib"] > factors["memory_mib"] or not _pluggable(factors):
                continue
            for host in manifest.hosts:
                if host.repeats and repeat > host.repeats:
                    continue
                for guest in manifest.guests:
                    if guest.hosts and host.name not in guest.hosts:
                        continue
                    if any(v not in guest.sweep.get(name, (v,)) or v not in host.sweep.get(name, (v,))
                           for name, v in factors.items()):
                        continue
                    out.append(Point(host.name, guest.name, tuple(values), repeat, manifest.experiment))
    return out


def _pluggable(factors: dict) -> bool:
    """Whether a point's plugged memory exists: nothing plugged, or a hotplug guest (a ballooned one boots
    with all of memory and has nothing to plug into) with room for it between currentMemory and memory."""
    plugged = factors.get("plugged_mib", 0)
    return not plugged or (factors["memory_model"] != "balloon"
                           and plugged <= factors["memory_mib"] - factors["current_memory_mib"])


def skipped_pairs(manifest: Manifest) -> list[tuple[int, int]]:
    """(memory, currentMemory) pairs left out because currentMemory would exceed memory."""
    return [(m, c) for m in manifest.sweep.memory for c in manifest.sweep.current_memory if c > m]


def matches(point: Point, pattern: str) -> bool:
    """A --only glob matches a point's whole key ('local/debian/m4096-c1024-r1') or its short form
    ('m4096-c1024-r1'), never a part of it: '...-r1' does not select r10."""
    return fnmatch.fnmatchcase(point.key, pattern) or fnmatch.fnmatchcase(point.short, pattern)


def check_only(only: list[str] | None, plans: list[list[Point]]) -> None:
    """Refuse an empty --only pattern and one that matches no point of any manifest, before anything runs
    (with --force a pattern nobody checked would overwrite records)."""
    for pattern in only or ():
        if not pattern.strip():
            raise UserError("--only '': an empty pattern would select every point; give a key or a glob "
                            "such as 'local/*/m4096-*' (run 'status' to list keys)")
        if not any(matches(p, pattern) for pts in plans for p in pts):
            example = next((pts[0].key for pts in plans if pts), "local/debian/m4096-c1024-r1")
            raise UserError(f"--only {pattern!r} matches no point; globs match whole keys like '{example}' "
                            "(or their last part, 'm4096-c1024-r1'); run 'status' to list them")


def select(all_points: list[Point], only: list[str] | None) -> list[Point]:
    """Points whose key matches any --only glob ('local/*', '*/m4096-*', 'm1024-c1024-r1'); the
    patterns must have been checked against all manifests with check_only."""
    if not only:
        return all_points
    return [p for p in all_points if any(matches(p, pat) for pat in only)]


def results_dir(manifest: Manifest, override: str | None = None) -> Path:
    """Where records go: --results DIR/<experiment>, else the manifest's 'results' folder."""
    if override:
        return Path(override) / manifest.experiment
    return Path(manifest.results)
