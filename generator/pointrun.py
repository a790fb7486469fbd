"""One point being measured: everything its measuring needs to know of the run (`PointRun`), and the
one place its record is started (`new_record`).

A guest kind's measure function takes a `PointRun` and the files its kind staged; nothing else travels
down from the sweep. A record field is declared once (results.RECORD: its type, what it holds, what a
measured record starts with) and filled in where its value is known.
"""
from __future__ import annotations

import datetime as _dt
import threading
from dataclasses import dataclass
from typing import Callable

from . import __version__, hypervisors, results
from .hosts import HostRuntime
from .manifest import Manifest
from .plan import Point

# Host facts a record carries whole when the host has them: Xen's version and memory (hypervisors/xen.py),
# the outer machine of a nested host (hosts/nested.py).
HOST_DETAILS = ("xen", "nested")


@dataclass(frozen=True)
class PointRun:
    """A point of a sweep, on the host it runs on, with the run's decisions about that host.

    live: the sweep's progress entry for this point, given the balloon's samples as they come.
    teardown: called with the still-running domain once everything is read, to destroy it in the
    background (the sweep's reaper); without it, or when the point is interrupted, it is destroyed
    where it was measured."""

    point: Point
    manifest: Manifest
    host: HostRuntime
    facts: dict
    domain_type: str
    domain_type_reason: str
    run_id: str
    stop: threading.Event
    live: dict | None = None
    teardown: Callable | None = None

    @property
    def guest(self):
        return self.manifest.guest(self.point.guest)

    @property
    def vcpus(self) -> int:
        return vcpus_of(self.point, self.guest)

    @property
    def hypervisor(self) -> hypervisors.Hypervisor:
        return hypervisors.for_domain_type(self.domain_type)

    @property
    def balloon_model(self) -> str:
        return self.manifest.balloon_model(self.host.spec)

    @property
    def inflates(self) -> bool:
        """Whether the guest boots with all of memory and its balloon then inflates down to
        currentMemory (the virtio balloon); a Xen PV guest is built with currentMemory populated."""
        return self.point.memory_model == "balloon" and self.balloon_model in self.hypervisor.inflating

    @property
    def target_kib(self) -> int | None:
        """Where the balloon's `actual` ends when it inflates; None when nothing inflates."""
        return self.point.current_memory_mib * 1024 if self.inflates else None

    @property
    def backing(self) -> str:
        return memory_backing(self.host.spec.memory_backing, self.point.memory_mib, self.facts)

    def share_progress(self, record: dict) -> None:
        """Let the sweep's progress read this point's balloon samples while it runs (nothing to follow
        when no balloon inflates)."""
        if self.live is not None and self.inflates:
            self.live.update(timeline=record["balloon_timeline"], memory_kib=self.point.memory_mib * 1024,
                             target_kib=self.point.current_memory_mib * 1024)


def vcpus_of(point: Point, guest) -> int:
    """A point's virtual CPUs: its own where a factor sweeps them, else its manifest guest's."""
    return point.factors.get("vcpus", guest.vcpus)


def point_identity(point: Point, manifest: Manifest, status: str = "error", reason: str = "") -> dict:
    """The fields every record has, whatever happened to the point."""
    return {"experiment": manifest.experiment, "host": point.host, "guest": point.guest, **point.factors,
            "repeat": point.repeat, "status": status, "reason": reason, "manifest_sha256": manifest.sha256,
            "tool_version": __version__}


def host_fields(facts: dict, domain_type: str, domain_type_reason: str) -> dict:
    """What every measured record says about the host it ran on."""
    return {"domain_type": domain_type, "domain_type_reason": domain_type_reason,
            "hypervisor": facts.get("hypervisor"), "qemu_version": facts.get("qemu_version"),
            "libvirt_version": facts.get("libvirt_version"), "host_kernel": facts.get("kernel"),
            "host_cores": facts.get("cores"), "host_memory_mib": facts.get("memory_mib")}


def memory_backing(setting: str, memory_mib: int, facts: dict) -> str:
    """How a point's RAM is backed. 'auto': memfd when the point is larger than the host can commit
    (RAM + swap: with Linux's overcommit heuristic one larger private allocation is refused)."""
    if setting != "auto":
        return setting
    commit = (facts.get("memory_mib") or 0) + (facts.get("swap_mib") or 0)
    return "memfd" if commit and memory_mib > commit * 0.9 else "default"


def new_record(run: PointRun, kind: str, **known) -> dict:
    """A measured point's record as its measuring starts: the point, the host, the guest and its
    domain, every field declared to start present (results.RECORD's `starts`), then what the kind
    `kind` knows already (`known`)."""
    record = {**point_identity(run.point, run.manifest), **host_fields(run.facts, run.domain_type,
                                                                        run.domain_type_reason),
              **results.starting_fields(), "guest_kind": kind, "guest_vcpus": run.vcpus,
              "balloon_model": run.balloon_model,
              "memory_backing": run.backing if run.hypervisor.memory_backing else None,
              "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if run.host.spec.guest_cmdline:
        record["kernel_parameters"] = run.host.spec.guest_cmdline
    record.update({key: run.facts[key] for key in HOST_DETAILS if run.facts.get(key)})
    record.update(known)
    return record
