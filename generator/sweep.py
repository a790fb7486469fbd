"""The sweep: measure every point a manifest asks for that has no record yet.

Per host: open libvirt, remove leftovers of a killed run, build and stage the probe, choose the
domain type, then measure points in parallel slots bounded by the host's cores and memory. Each
record is written the moment its point is done, so an interrupted sweep loses nothing measured.
"""
from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from . import results
from .errors import StopRequested, UserError, libvirt_message
from .hosts import HostRuntime, libvirt_module, runtime_for
from .hosts.base import machine_cache_dir  # where answers about this machine are kept (KVM, QEMU)
from .manifest import Manifest
from . import hypervisors
from .kinds import Staged, kind_of, stage_probe
from .canary import canary
from .measure import measure_staged
from .pointrun import PointRun, point_identity, vcpus_of
from .readings import destroy
from .plan import Point, points, results_dir, select
from .progress import Progress

log = logging.getLogger(__name__)

QEMU_OVERHEAD_MIB = 256  # QEMU's own memory beside the guest's, roughly


@dataclass
class SweepSummary:
    planned: int = 0
    skipped: int = 0
    measured: int = 0
    failed: dict = field(default_factory=dict)  # point key -> status
    host_errors: dict = field(default_factory=dict)  # host -> message
    interrupted: bool = False


def estimated_footprint_mib(point: Point) -> int:
    """What a point may really take from the host: currentMemory, the guest's page descriptors for all
    of memory (64 bytes per 4 KiB page), the bounce buffer, and QEMU itself. Pages the balloon took
    back are never touched, so `memory` itself is not the cost."""
    return point.current_memory_mib + point.memory_mib // 64 + 64 + QEMU_OVERHEAD_MIB


def slots_for(host_spec, facts: dict, vcpus: int, jobs: int | None, cores_taken: int = 0) -> int:
    """Points measured at once: --jobs, else the manifest's slots, else one per free core (cores
    that a nested host on this machine uses are not free)."""
    if jobs:
        return max(1, jobs)
    if host_spec.slots:
        return host_spec.slots
    return max(1, (int(facts.get("cores") or 1) - cores_taken) // max(1, vcpus))


class MemoryBudget:
    """Lets a point start only while the host has memory for it (one point may always run)."""

    def __init__(self, mib: int):
        self.total = max(0, mib)
        self.used = 0
        self.running = 0
        self.cond = threading.Condition()

    def acquire(self, need: int, stop: threading.Event) -> None:
        with self.cond:
            while self.running and self.used + need > self.total:
                if stop.is_set():
                    raise StopRequested()
                self.cond.wait(0.5)
            self.used += need
            self.running += 1

    def release(self, need: int) -> None:
        with self.cond:
            self.used -= need
            self.running -= 1
            self.cond.notify_all()


def _canary_cache(cache_dir: Path, facts: dict, release: str) -> Path:
    """The canary's answer for one machine (its hostname), hypervisor version, kernel and guest kernel."""
    key = f"{facts['hostname']}-{facts['hypervisor']}-{facts['kernel']}-{release}"
    safe = "".join(ch if ch.isalnum() or ch in "-._" else "_" for ch in key)
    return cache_dir / "canary" / f"{safe}.json"


@dataclass(frozen=True)
class CanaryBoot:
    """The probe that boots as the KVM canary: its files on the host, its release (with the boot method:
    part of the cached answer's key), how long it may take, and the run it belongs to."""

    kernel: str
    initrd: str
    release: str
    timeout: float
    run_id: str
    stop: threading.Event | None = None


def choose_domain_type(host: HostRuntime, facts: dict, probe: CanaryBoot, cache_dir: Path,
                       note=None) -> tuple[str, str]:
    """(domain type, why): as configured, or for 'auto' KVM if a short canary boot works, else TCG.
    `note` hears, before the canary boots, what the wait is for and how to check again later."""
    wanted = host.spec.domain_type
    if wanted != "auto":
        return wanted, "set in the manifest"
    if host.spec.is_nested:  # the tool built it to run one hypervisor: nothing to try
        dtype = host.spec.nested_domain_type
        return dtype, f"a {hypervisors.label(dtype)} host nested in QEMU (TCG) on this machine"
    hv = hypervisors.for_facts(str(facts["hypervisor"]).split(" ")[0], host.uri)
    if len(hv.domain_types) == 1:  # nothing to choose (Xen)
        return hv.domain_types[0], f"the host runs {hv.label(hv.domain_types[0])}"
    libvirt = libvirt_module()
    try:
        host.connect().getDomainCapabilities(None, "x86_64", None, "kvm", 0)
    except libvirt.libvirtError as e:
        return "qemu", f"KVM not offered by the host ({libvirt_message(e)}); using TCG"
    cache = _canary_cache(cache_dir, facts, probe.release)
    if cache.exists():
        try:
            saved = json.loads(cache.read_text())
            return saved["domain_type"], saved["reason"] + " (cached canary result)"
        except (ValueError, KeyError):
            pass
    if note is not None:
        note(f"host {host.name}: checking whether KVM works: booting a canary guest, up to {probe.timeout:g} s "
             f"(the answer is kept in {cache}; delete that file to check again)")
    ok, why = canary(host, kernel=probe.kernel, initrd=probe.initrd, domain_type="kvm", timeout=probe.timeout,
                     run_id=probe.run_id, stop=probe.stop)
    chosen = ("kvm", f"KVM {why}") if ok else ("qemu", f"KVM unusable ({why}); using TCG")
    cache.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    results.write_atomic(cache, json.dumps({"domain_type": chosen[0], "reason": chosen[1]}) + "\n")
    return chosen


@dataclass(frozen=True)
class SweepOptions:
    """What `sweep`'s options ask: where records go (--results), which points (--only), whether recorded
    points are measured again (--force: all; --retry: those that did not end in an outcome), how many
    at once (--jobs)."""

    results_override: str | None = None
    only: list[str] | None = None
    force: bool = False
    retry: bool = False
    jobs: int | None = None


class Sweep:
    def __init__(self, manifest: Manifest, *, cache_dir: Path, options: SweepOptions = SweepOptions(),
                 progress: Progress | None = None):
        self.manifest = manifest
        self.cache_dir = cache_dir
        self.results = results_dir(manifest, options.results_override)
        self.points = select(points(manifest), options.only)
        self.force = options.force
        self.retry = options.retry
        self.jobs = options.jobs
        self.stop = threading.Event()
        self.run_id = uuid.uuid4().hex[:6]
        self.progress = progress or Progress(0, stream=sys.stderr)
        self.summary = SweepSummary(planned=len(self.points))
        self._write_lock = threading.Lock()
        self._finished: dict[str, int] = {}  # host -> points recorded, for the progress count
        self._hosts_running: list[str] = []

    def todo(self) -> list[Point]:
        return [p for p in self.points if results.needs_measuring(p, self.results, self.force, self.retry)]

    def run(self) -> SweepSummary:
        todo = self.todo()
        self.summary.skipped = len(self.points) - len(todo)
        if todo:  # before anything boots: a measurement that cannot be saved is a measurement lost
            results.check_writable(self.results)
        self.progress.start(len(todo), skipped=self.summary.skipped)
        if not todo:
            self.progress.finish()
            return self.summary
        by_host: dict[str, list[Point]] = {}
        for p in todo:
            by_host.setdefault(p.host, []).append(p)
        self._hosts_running = list(by_host)
        previous = _install_stop_handlers(self.stop)
        try:
            threads = [threading.Thread(target=self._host_guarded, args=(name, pts), name=f"host-{name}")
                       for name, pts in by_host.items()]
            for t in threads:
                t.start()
            last_tick = time.monotonic()
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(0.2)
                if time.monotonic() - last_tick >= 1.0:
                    self.progress.tick()
                    last_tick = time.monotonic()
        finally:
            _restore_handlers(previous)
            self.progress.finish()
        self.summary.interrupted = self.stop.is_set()
        return self.summary

    def _host_guarded(self, name: str, pts: list[Point]) -> None:
        try:
            self._run_host(name, pts)
        except StopRequested:
            pass
        except Exception as e:  # noqa: BLE001 - one host failing must not hide the others
            log.debug("host %s failed", name, exc_info=True)
            what = str(e) if isinstance(e, (UserError, OSError)) else f"{type(e).__name__}: {e}"
            message = what if what.startswith(f"host {name}:") else f"host {name}: {what}"
            self.summary.host_errors[name] = message  # printed once, by the CLI, when the sweep ends
            self.progress.skip_many(len(pts) - self._finished.get(name, 0))

    def _run_host(self, name: str, pts: list[Point]) -> None:
        spec = self.manifest.host(name)
        host = runtime_for(spec, self.cache_dir, note=self.progress.note, stop=self.stop)
        try:
            first = host.first_contact()
            if first:
                self.progress.note(f"host {name}: {first}")
            host.connect()
            host.check_console_logging()
            leftovers = host.clean_leftovers()
            if leftovers:
                self.progress.note(f"host {name}: removed {len(leftovers)} leftover domain(s) of an earlier run: "
                                   + ", ".join(leftovers))
            overlays = host.remove_leftover_overlays()
            if overlays:
                self.progress.note(f"host {name}: removed {len(overlays)} overlay(s) a killed run left: "
                                   + ", ".join(overlays))
            facts = host.facts()
            staged: dict[str, Staged] = {}
            for guest in sorted({p.guest for p in pts}):
                g = self.manifest.guest(guest)
                staged[guest] = kind_of(g).stage(host, g, manifest=self.manifest, cache_dir=self.cache_dir,
                                                 note=self.progress.note)
            first = next((s.canary for s in staged.values() if s.canary), None)
            if first is None:  # only full systems: the canary that picks KVM or TCG is still the probe
                first = stage_probe(host, "host", "", "auto", "virtio", self.cache_dir)
            probe = CanaryBoot(first[0], first[1], first[2] + "-" + first[3], self.manifest.timeouts.canary,
                               self.run_id, self.stop)
            dtype, why = choose_domain_type(host, facts, probe, machine_cache_dir(), note=self.progress.note)
            self.progress.note(f"host {name}: domain type {dtype} ({why}); {facts['hypervisor']}, "
                               f"libvirt {facts['libvirt_version']}, {facts['cores']} cores, "
                               f"{facts['memory_mib']} MiB")
            vcpus = max(vcpus_of(p, self.manifest.guest(p.guest)) for p in pts)
            cores_taken, memory_taken = self._nested_share(spec, self._hosts_running)
            slots = slots_for(spec, facts, vcpus, self.jobs, cores_taken)
            budget = MemoryBudget(int(facts["memory_available_mib"] * 0.8) - memory_taken)
            # Within a repeat, largest memory first: the longest boots start first, so the slots end
            # together (and every repeat still covers the whole range before the next begins).
            pts = sorted(pts, key=lambda p: (p.repeat, -p.memory_mib, p.values, p.guest))
            # Finished guests are destroyed by the reaper while the slot boots the next point; the sweep
            # waits for the reaper before it returns, so no guest outlives it.
            with ThreadPoolExecutor(max_workers=slots, thread_name_prefix=f"{name}-reaper") as reaper, \
                    ThreadPoolExecutor(max_workers=slots, thread_name_prefix=f"{name}-slot") as pool:
                on_host = _OnHost(host, facts, staged, dtype, why, budget, reaper)
                futures = [pool.submit(self._one, on_host, p) for p in pts]
                for f in as_completed(futures):
                    f.result()
        finally:
            host.close()

    def _nested_share(self, spec, hosts_with_points: list[str]) -> tuple[int, int]:
        """(cores, MiB) that nested hosts measured in this run take from this machine: the local host
        plans its slots and memory without them, so both sweeps run at once without starving."""
        if spec.is_remote:
            return 0, 0
        nested = [self.manifest.host(h) for h in set(hosts_with_points)]
        nested = [h for h in nested if h.is_nested]
        return sum(h.nested.cpus for h in nested), sum(h.nested.memory + QEMU_OVERHEAD_MIB for h in nested)

    def _kept_outcome(self, point: Point, record: dict) -> str | None:
        """The status of the point's recorded outcome, if the new record is not one (a timeout or an
        error of the run) and the recorded one is (ok, oom, panic, refused): that one stays."""
        if record["status"] in results.FINAL:
            return None
        try:
            old = results.existing(point, self.results)
        except UserError:
            return None  # an unreadable record is not an outcome worth keeping
        return old["status"] if old and old["status"] in results.FINAL else None

    def _one(self, on: "_OnHost", point: Point) -> None:
        if self.stop.is_set():
            return
        budget, reaper = on.budget, on.reaper
        need = estimated_footprint_mib(point)
        budget.acquire(need, self.stop)
        handed_off = []

        def teardown(dom) -> None:
            """Destroy the finished guest in the background; its memory is free for others only after."""
            def reap() -> None:
                try:
                    destroy(dom, libvirt_module())
                finally:
                    budget.release(need)
            handed_off.append(reaper.submit(reap))
        try:
            if self.stop.is_set():
                return
            live = self.progress.begin(point.key)
            try:
                run = PointRun(point, self.manifest, on.host, on.facts, on.domain_type, on.domain_type_reason,
                               self.run_id, self.stop, live=live, teardown=teardown)
                record = measure_staged(run, on.staged[point.guest])
            except StopRequested:
                self.progress.end(point.key, None)
                return
            except Exception as e:  # noqa: BLE001 - a tool error on one point is recorded, the sweep goes on
                log.debug("point %s failed", point.key, exc_info=True)
                record = point_identity(point, self.manifest, "error", f"{type(e).__name__}: {e}")
            with self._write_lock:
                record = results.checked(dict(record, schema_version=results.SCHEMA_VERSION))
                kept = self._kept_outcome(point, record)
                if kept:  # a re-measure that ended in a timeout or error never replaces an outcome
                    self.progress.note(f"  {point.key}: this run ended in {record['status']} "
                                       f"({record.get('reason') or 'no reason given'}); its recorded outcome "
                                       f"({kept}) is kept")
                else:
                    results.write_record(point.record_path(self.results), record, root=self.results)
                self.summary.measured += 1
                self._finished[point.host] = self._finished.get(point.host, 0) + 1
                if record["status"] != "ok":
                    self.summary.failed[point.key] = record["status"]
            self.progress.end(point.key, record)
        finally:
            if not handed_off:
                budget.release(need)


@dataclass(frozen=True)
class _OnHost:
    """What every point of one host shares in a sweep: the host, its facts, the staged guests, the
    domain type chosen and why, its memory budget and the reaper that destroys finished guests."""

    host: HostRuntime
    facts: dict
    staged: dict[str, Staged]
    domain_type: str
    domain_type_reason: str
    budget: MemoryBudget
    reaper: ThreadPoolExecutor


def _install_stop_handlers(stop: threading.Event):
    """SIGINT/SIGTERM: stop starting points, destroy running guests, keep what is written."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = {}

    def handler(signum, _frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        print(f"\n{signal.Signals(signum).name}: stopping; running guests are destroyed, finished points are kept",
              file=sys.stderr)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, handler)
    return previous


def _restore_handlers(previous) -> None:
    if previous:
        for sig, h in previous.items():
            signal.signal(sig, h)

