"""Measure one point: define the domain, boot the probe, read both views of memory, tear down.

The guest's view comes from the probe's serial console (markers written by its init); the host's
view from libvirt: balloon statistics (``virDomainMemoryStats``) sampled every second and what
``virsh dominfo`` shows (``virDomainGetInfo``: max and used memory). Failures are results: a guest
that runs out of memory or panics, a host that refuses the allocation, a boot that times out.
"""
from __future__ import annotations

import datetime as _dt
import logging
import re
import threading
import time
from pathlib import Path

from . import __version__
from .errors import StopRequested
from . import hypervisors
from .domain import DomainSpec, domain_name, kernel_cmdline
from .hosts import HostRuntime, libvirt_module
from .manifest import Manifest
from .plan import Point
from .guests.console import OOM_RE, PANIC_RE, Console, excerpt, one_line, parse_free, parse_meminfo
from .text import bounded_int, plain

log = logging.getLogger(__name__)

_REFUSED_RE = re.compile(r"cannot set up guest memory|Cannot allocate memory|cannot allocate|"
                         r"not enough memory|Insufficient free host memory|out of memory|"
                         r"failed to free memory|Failed to balloon domain0|claim.*memory|"
                         r"failed to allocate 0x[0-9a-f]+ pages", re.I)  # the last two: libxl building a domain

def _share_progress(live: dict | None, record: dict, point: Point, inflates: bool) -> None:
    """Let the sweep's progress read this point's balloon samples while it runs (a virtio balloon that
    inflates from memory to currentMemory; nothing to follow otherwise)."""
    if live is not None and inflates:
        live.update(timeline=record["balloon_timeline"], memory_kib=point.memory_mib * 1024,
                    target_kib=point.current_memory_mib * 1024)


def point_identity(point: Point, manifest: Manifest, status: str = "error", reason: str = "") -> dict:
    """The fields every record has, whatever happened to the point."""
    return {"experiment": manifest.experiment, "host": point.host, "guest": point.guest, **point.factors,
            "repeat": point.repeat, "status": status, "reason": reason, "manifest_sha256": manifest.sha256,
            "tool_version": __version__}


def host_fields(host_facts: dict, domain_type: str, domain_type_reason: str) -> dict:
    """What every measured record says about the host it ran on."""
    return {"domain_type": domain_type, "domain_type_reason": domain_type_reason,
            "hypervisor": host_facts.get("hypervisor"), "qemu_version": host_facts.get("qemu_version"),
            "libvirt_version": host_facts.get("libvirt_version"), "host_kernel": host_facts.get("kernel"),
            "host_cores": host_facts.get("cores"), "host_memory_mib": host_facts.get("memory_mib")}


def memory_backing(setting: str, memory_mib: int, host_facts: dict) -> str:
    """How a point's RAM is backed. 'auto': memfd when the point is larger than the host can commit
    (RAM + swap: with Linux's overcommit heuristic one larger private allocation is refused)."""
    if setting != "auto":
        return setting
    commit = (host_facts.get("memory_mib") or 0) + (host_facts.get("swap_mib") or 0)
    return "memfd" if commit and memory_mib > commit * 0.9 else "default"


# Host facts a record carries whole when the host has them: Xen's version and memory (hypervisors/xen.py),
# the outer machine of a nested host (hosts/nested_xen.py).
HOST_DETAILS = ("xen", "nested")


def _extra_cmdline(point: Point, guest, host: HostRuntime) -> str:
    """Kernel parameters beyond the tool's own: hotplugged memory online as movable, then the guest's
    and the host's (manifest keys guests[].cmdline, hosts[].guest_cmdline)."""
    return " ".join(x for x in ("memhp_default_state=online_movable" if point.memory_model != "balloon" else "",
                                guest.cmdline, host.spec.guest_cmdline) if x)


def _spec(point: Point, manifest: Manifest, **rest) -> DomainSpec:
    """The domain of a point: every factor's value from the point, the guest's and the balloon's
    settings from the manifest, the rest (name, files, console, backing) as the caller decided."""
    guest = manifest.guest(point.guest)
    return DomainSpec.for_point(point.factors, vcpus=guest.vcpus, stats_period=manifest.balloon.stats_period, **rest)


def _begin(point: Point, manifest: Manifest, host: HostRuntime, run_id: str):
    """What measuring a point starts with, for either kind of guest: libvirt, the connection, the
    manifest's guest, the domain's name and its console file, made ready."""
    libvirt, conn = libvirt_module(), host.connect()
    name = domain_name(run_id, f"{point.guest}-{point.short}")
    console_path = host.console_path(name)
    host.prepare_console(console_path)
    return libvirt, conn, manifest.guest(point.guest), name, console_path


def measure(point: Point, *, manifest: Manifest, host: HostRuntime, host_facts: dict, kernel: str,
            initrd: str, guest_release: str, domain_type: str, domain_type_reason: str, run_id: str,
            stop: threading.Event, boot_method: str = "bzimage", teardown=None, live: dict | None = None) -> dict:
    """Boot one point and return its record (a dict ready for JSON). Never leaves the domain running.

    kernel is what the domain boots: the bzImage, or (boot_method 'pvh') the uncompressed vmlinux
    that QEMU starts through its PVH entry point, skipping firmware work and decompression.
    teardown: called with the still-running domain once everything is read, to destroy it in the
    background (the sweep's reaper); without it, or when the point is interrupted, it is destroyed here.
    live: the sweep's progress entry for this point, given the balloon's samples as they come."""
    libvirt, conn, guest, name, console_path = _begin(point, manifest, host, run_id)
    balloon_model = manifest.balloon_model(host.spec)
    # The virtio balloon inflates from memory down to currentMemory after boot; a Xen PV guest is built
    # with currentMemory populated, so there is nothing to inflate (the probe waits for Xen's balloon
    # to report its target instead).
    balloon_sized = point.memory_model == "balloon" and balloon_model == "virtio"
    target_kib = (point.memory_mib - point.current_memory_mib) * 1024 if balloon_sized else 0
    extra = _extra_cmdline(point, guest, host)
    hv = hypervisors.for_domain_type(domain_type)
    cmdline = kernel_cmdline(mode="measure", stable=manifest.timeouts.stable, settle=manifest.timeouts.settle,
                             balloon_kib=target_kib, extra=extra, console=hv.console_device,
                             memblock_debug=hv.memblock_debug)
    backing = memory_backing(host.spec.memory_backing, point.memory_mib, host_facts)
    xml = hv.render(_spec(point, manifest, name=name, domain_type=domain_type, kernel=kernel, initrd=initrd,
                          cmdline=cmdline, console=console_path, balloon_model=balloon_model, memory_backing=backing))
    started = _dt.datetime.now(_dt.timezone.utc)
    record: dict = {
        **point_identity(point, manifest),
        **host_fields(host_facts, domain_type, domain_type_reason),
        "guest_kernel": guest_release, "guest_vcpus": guest.vcpus, "boot_method": boot_method,
        "balloon_model": balloon_model, "memory_backing": backing if hv.memory_backing else None,
        "started_at": started.isoformat(timespec="seconds"),
        "memtotal_boot_kib": None, "memtotal_settled_kib": None, "free_m": None, "meminfo": None,
        "balloon": None, "balloon_timeline": [], "host_view": None, "dmesg": [],
        "durations": {"boot_s": None, "settle_s": None, "total_s": None}, "phases": {}, "console_excerpt": [],
    }
    if host.spec.guest_cmdline:
        record["kernel_parameters"] = host.spec.guest_cmdline
    _share_progress(live, record, point, balloon_sized)
    for extra_facts in HOST_DETAILS:
        if host_facts.get(extra_facts):
            record[extra_facts] = host_facts[extra_facts]
    clock = {"t0": time.monotonic()}
    dom = None
    finished = False
    try:
        try:
            dom = conn.createXML(xml, 0)
        except libvirt.libvirtError as e:
            message = e.get_error_message() or str(e)
            detail = host.creation_failure(name)
            record["status"] = "refused" if _REFUSED_RE.search(message + " " + detail) else "error"
            record["reason"] = one_line(message + (f" ({detail})" if detail else ""))
            return record
        clock["started"] = time.monotonic() - clock["t0"]
        _follow(dom, record, host=host, console_path=console_path, manifest=manifest, clock=clock, stop=stop,
                libvirt=libvirt, actual_target_kib=point.current_memory_mib * 1024 if balloon_sized else None)
        finished = True
        return record
    finally:
        console = host.read_text(console_path)  # nothing the guest prints after 'done' is read
        if dom is not None:
            if finished and teardown is not None:
                teardown(dom)
            else:
                destroy(dom, libvirt)
        host.remove(console_path)
        record["durations"]["total_s"] = round(time.monotonic() - clock["t0"], 2)
        record["console_excerpt"] = excerpt(console)
        record["phases"] = _phases(record, Console.parse(console), clock)


def _phases(record: dict, console: Console, clock: dict) -> dict:
    """Where a point's time went, in seconds: host-side steps from the host's clock, in-guest steps
    from the guest's uptime stamps (so the host's polling does not blur them)."""
    u = {k: console.number(k) for k in ("init", "balloon-loaded", "inflate-start", "inflate-end", "settled", "done")}
    total = record["durations"]["total_s"]
    started, init_seen, done_seen = clock.get("started"), clock.get("init_seen"), clock.get("done_seen")
    out: dict = {"define_start_s": started}
    if init_seen is not None and u["init"] is not None and started is not None:
        out["firmware_s"] = max(0.0, init_seen - started - u["init"])  # includes up to one poll interval
    out["kernel_to_init_s"] = u["init"]
    if u["balloon-loaded"] is not None and u["init"] is not None:
        out["module_load_s"] = u["balloon-loaded"] - u["init"]
    if u["inflate-start"] is not None and u["inflate-end"] is not None:
        out["inflation_s"] = u["inflate-end"] - u["inflate-start"]
    elif u["settled"] is not None:
        out["inflation_s"] = 0.0
    if u["settled"] is not None:
        settle_from = u["inflate-end"] if u["inflate-end"] is not None else u["balloon-loaded"]
        if settle_from is not None:
            out["stability_s"] = u["settled"] - settle_from
    if u["done"] is not None and u["settled"] is not None:
        out["reading_s"] = u["done"] - u["settled"]
    if done_seen is not None:
        out["teardown_s"] = total - done_seen
        if init_seen is not None and u["done"] is not None and u["init"] is not None:
            out["host_notice_s"] = max(0.0, done_seen - init_seen - (u["done"] - u["init"]))
    actual = [(t, a) for t, a, *_ in record.get("balloon_timeline", []) if a is not None]
    changes = [t for (t, a), (_, prev) in zip(actual[1:], actual) if a != prev]
    if changes:
        before = max(t for t, _ in actual if t < changes[0])
        out["inflation_host_s"] = changes[-1] - before  # first to last change of the balloon's actual
    return {k: round(v, 2) for k, v in out.items() if v is not None}


def _follow(dom, record: dict, *, host: HostRuntime, console_path: str, manifest: Manifest, clock: dict,
            stop: threading.Event, libvirt, actual_target_kib: int | None = None) -> None:
    """Poll console and balloon until the probe reports 'done', dies, or runs out of time.

    The guest knows first that its balloon holds the target; the host hears of it through QEMU's
    balloon events, which QEMU sends at most once a second. So at 'done' the host waits (up to 3 s)
    until its own view of the balloon's actual has arrived at the target before its last sample."""
    timeouts = manifest.timeouts
    t0 = clock["t0"]
    poll = 0.1 if not host.spec.is_remote else 0.5 if host.spec.is_nested else 1.0
    try:
        dom.setMemoryStatsPeriod(max(1, int(round(manifest.balloon.stats_period))), libvirt.VIR_DOMAIN_AFFECT_LIVE)
    except libvirt.libvirtError:
        pass  # the <stats period> in the XML already asks for it; some drivers refuse the call
    booted_at = None
    console = Console.parse("")
    for elapsed, console, alive in _console_ticks(dom, record, host=host, console_path=console_path, t0=t0,
                                                  stop=stop, libvirt=libvirt, poll=poll):
        if booted_at is None and console.has("init"):
            booted_at = elapsed
            clock["init_seen"] = elapsed
        if console.has("done"):
            clock["done_seen"] = elapsed
            _final_sample(dom, record, alive, None if console.has("balloon-short") else actual_target_kib, t0, libvirt)
            break
        if not alive:
            time.sleep(0.3)
            console = Console.parse(host.read_text(console_path))
            if console.has("done"):
                break
            _classify_death(record, console)
            _fill_guest_view(record, console, booted_at)
            return
        if booted_at is None and elapsed > timeouts.boot:
            record["status"] = "timeout"
            record["reason"] = f"the guest did not report within the boot timeout ({timeouts.boot:g} s)"
            _fill_guest_view(record, console, booted_at)
            return
        if booted_at is not None and elapsed - booted_at > timeouts.settle + 60:
            record["status"] = "timeout"
            record["reason"] = f"the guest did not finish within the settle timeout ({timeouts.settle:g} s)"
            _fill_guest_view(record, console, booted_at)
            return
    _fill_guest_view(record, console, booted_at)
    if console.has("settle-timeout"):
        record["status"] = "timeout"
        record["reason"] = f"the balloon was still inflating after {timeouts.settle:g} s"
    elif record["memtotal_settled_kib"] is None:
        record["status"] = "error"
        record["reason"] = "the probe finished without reporting MemTotal"
    elif record["free_m"] is None or record["free_m"].get("total") is None:
        record["status"] = "error"
        record["reason"] = "the probe finished without reporting free -m"
    else:
        record["status"] = "ok"
        notes = [f"insmod failed: {v}" for k, v in console.markers.items() if k == "insmod-failed"]
        short = [bounded_int(v) for v in console.markers.get("balloon-short", "").split()]
        if len(short) == 2 and None not in short:
            notes.append(f"the balloon stopped at {short[0] // 1024} MiB of its {short[1] // 1024} MiB "
                         "target (nothing changed for the stability window)")
        record["reason"] = "; ".join(notes)[:400]


def _console_ticks(dom, record: dict, *, host: HostRuntime, console_path: str, t0: float,
                   stop: threading.Event, libvirt, poll: float):
    """The polling head shared by the probe and the console-reporting system: every `poll` seconds,
    stop if asked, read the console again, check the domain is alive and sample the balloon (at most
    once a second); yields (seconds since t0, console, alive) until the caller breaks or returns."""
    last_sample = -1.0
    while True:
        if stop.is_set():
            raise StopRequested()
        elapsed = time.monotonic() - t0
        console = Console.parse(host.read_text(console_path))
        alive = _alive(dom, libvirt)
        if alive and elapsed - last_sample >= 1.0:
            last_sample = elapsed
            _sample(dom, record, elapsed, libvirt)
        yield elapsed, console, alive
        time.sleep(poll)


def _final_sample(dom, record: dict, alive: bool, target_kib: int | None, t0: float, libvirt) -> None:
    """The guest said 'done': once the host's view of the balloon has caught up, the last sample."""
    if not alive:
        return
    if target_kib is not None:
        _wait_for_actual(dom, target_kib, libvirt)
        _wait_for_fresh_stats(dom, time.time(), libvirt)
    _sample(dom, record, time.monotonic() - t0, libvirt)


def _wait_for_actual(dom, target_kib: int, libvirt, limit: float = 3.0) -> None:
    """Until both host views agree the balloon is at its target: the live query (memoryStats'
    actual) and libvirt's cached value behind `virsh dominfo` (updated by QEMU's balloon events)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            actual = dom.memoryStats().get("actual")
            used = dom.info()[2]
        except libvirt.libvirtError:
            return
        if actual is not None and int(actual) <= target_kib and int(used) <= target_kib:
            return
        time.sleep(0.1)


def _wait_for_fresh_stats(dom, since: float, libvirt, limit: float = 4.0) -> None:
    """Until the guest's balloon statistics were sent after `since` (the host's clock, as QEMU stamps
    `last_update`, in whole seconds): statistics from before the balloon's last step would give a stale
    `available`. Waits at most `limit` (a guest without a statistics period never sends any)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            last = dom.memoryStats().get("last_update")
        except libvirt.libvirtError:
            return
        if last is None or int(last) > int(since):
            return
        time.sleep(0.2)


def _alive(dom, libvirt) -> bool:
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError:
        return False  # transient domain destroyed on poweroff/panic: it no longer exists


def _sample(dom, record: dict, elapsed: float, libvirt) -> None:
    """One reading of the host's view: balloon statistics and dominfo's max/used memory."""
    try:
        stats = dom.memoryStats()
        state, max_kib, used_kib = dom.info()[:3]
    except libvirt.libvirtError:
        return
    keep = {k: int(v) for k, v in stats.items() if k in
            ("actual", "available", "usable", "unused", "rss", "swap_in", "swap_out", "major_fault",
             "minor_fault", "disk_caches", "hugetlb_pgalloc", "hugetlb_pgfail", "last_update")}
    record["balloon"] = keep
    record["host_view"] = {"max_memory_kib": int(max_kib), "used_memory_kib": int(used_kib)}
    record["balloon_timeline"].append([round(elapsed, 1), keep.get("actual"), keep.get("available")])


def _fill_guest_view(record: dict, console: Console, booted_at: float | None) -> None:
    boot = console.number("boot-memtotal-kib")
    settled = console.number("settled-memtotal-kib")
    record["memtotal_boot_kib"] = int(boot) if boot is not None else None
    record["memtotal_settled_kib"] = int(settled) if settled is not None else None
    if "free" in console.sections:
        record["free_m"] = parse_free(console.sections["free"])
    if "meminfo" in console.sections:
        record["meminfo"] = parse_meminfo(console.sections["meminfo"])
    if "xen-balloon" in console.sections:
        xen = {}
        for line in console.sections["xen-balloon"].splitlines():
            key, _, value = line.strip().partition(" ")
            number = bounded_int(value)
            if number is not None and re.fullmatch(r"(info/)?[a-z_]{1,20}", key):
                xen[key.split("/")[-1]] = number
        record["xen_balloon"] = xen
    if "memblock" in console.sections:
        from .guests.setaside import itemize

        xen = record.get("xen_balloon") or {}
        ballooned = (xen.get("low_kb") or 0) + (xen.get("high_kb") or 0) if xen else None
        found = itemize(console.sections["memblock"], record["memory_mib"] * 1024, record["memtotal_boot_kib"],
                        xen_ballooned_kib=ballooned or None, current_kib=record["current_memory_mib"] * 1024)
        if found:
            record["set_aside_kib"] = found["items"]
            record["set_aside_notes"] = found["notes"]
    if "zoneinfo" in console.sections:
        from .guests.setaside import zone_reserves

        record["zone_reserves"] = zone_reserves(console.sections["zoneinfo"])
    if "dmesg" in console.sections:
        record["dmesg"] = [line.strip()[:300] for line in console.sections["dmesg"].splitlines() if line.strip()]
    from .guests.system import kernel_release

    release = kernel_release(console.markers.get("kernel", ""))
    if release:  # the same check as a release read through the agent or SSH
        record["guest_kernel"] = release
    init_at = console.number("init")
    loaded_at = console.number("balloon-loaded")
    settled_at = console.number("settled") or console.number("settle-timeout")
    if booted_at is not None:
        record["durations"]["boot_s"] = round(booted_at, 2)
    if init_at is not None:
        record["durations"]["guest_boot_s"] = round(init_at, 2)
    if loaded_at is not None and settled_at is not None:
        record["durations"]["settle_s"] = round(settled_at - loaded_at, 2)


def _classify_death(record: dict, console: Console) -> None:
    text = console.text
    panic = PANIC_RE.search(text)
    if OOM_RE.search(text):
        record["status"] = "oom"
        killed = re.search(r"Out of memory: Killed process[^\n]*|Out of memory[^\n]*|Kernel panic[^\n]*memory[^\n]*", text)
        record["reason"] = one_line(killed.group(0) if killed else "the guest ran out of memory")
        if panic and panic.group(0) not in record["reason"]:
            record["reason"] += f"; {one_line(panic.group(0))}"
    elif panic:
        record["status"] = "panic"
        record["reason"] = one_line(panic.group(0))
    else:
        record["status"] = "error"
        record["reason"] = "the guest stopped before the probe reported" + \
            (" (after the balloon driver loaded)" if console.has("balloon-loaded") else "")


def destroy(dom, libvirt) -> None:
    """Destroy a domain if it still runs (a transient one is gone with it)."""
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError:
        pass


CANARY_SILENT_S = 2.5  # after the guest started: under KVM its kernel prints within a fraction of that


def canary(host: HostRuntime, *, kernel: str, initrd: str, domain_type: str, timeout: float, run_id: str,
           stop: threading.Event | None = None) -> tuple[bool, str]:
    """Boot the probe briefly with a domain type; (True, why) if its init answered in time. A guest that
    has printed nothing at all after CANARY_SILENT_S is not running: where KVM works the kernel's first
    lines reach the console well within a second, so the answer 'unusable' takes seconds, not the
    whole timeout."""
    libvirt = libvirt_module()
    conn = host.connect()
    name = domain_name(run_id, f"canary-{domain_type}")
    console_path = host.console_path(name)
    host.prepare_console(console_path)
    xml = hypervisors.render(DomainSpec(
        name=name, domain_type=domain_type, memory_mib=256, current_memory_mib=256, vcpus=1, kernel=kernel,
        initrd=initrd, cmdline=kernel_cmdline(mode="canary", stable=1, settle=1, balloon_kib=0),
        console=console_path, balloon_model="none", stats_period=1))
    t0 = time.monotonic()
    dom = None
    try:
        dom = conn.createXML(xml, 0)
        started = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if stop is not None and stop.is_set():
                raise StopRequested()
            text = host.read_text(console_path)
            if Console.parse(text).has("canary-ok"):
                return True, f"canary boot answered in {time.monotonic() - t0:.1f} s"
            if not text.strip() and time.monotonic() - started > min(CANARY_SILENT_S, timeout):
                return False, f"the canary guest printed nothing in {CANARY_SILENT_S:g} s"
            if not _alive(dom, libvirt):
                tail = excerpt(host.read_text(console_path), 3)
                return False, "canary guest stopped without answering" + (f": {tail[-1]}" if tail else "")
            time.sleep(0.3)
        return False, f"canary boot did not answer within {timeout:g} s"
    except libvirt.libvirtError as e:
        return False, one_line(e.get_error_message() or str(e))
    finally:
        # A QEMU stuck in a KVM that runs nothing takes seconds to die: the answer does not wait for it. The
        # thread is not a daemon, so the process never exits with the canary still running.
        def teardown():
            if dom is not None:
                destroy(dom, libvirt)
            host.remove(console_path)

        threading.Thread(target=teardown, name=f"teardown-{name}").start()


# --- full systems ------------------------------------------------------------------------------------
_MEMORY_LINE_RE = re.compile(r"Memory: \d+K/\d+K available[^\n]*|software IO TLB: mapped[^\n]*")


def measure_system(point: Point, *, manifest: Manifest, host: HostRuntime, host_facts: dict, boot: dict,
                   domain_type: str, domain_type_reason: str, run_id: str, stop: threading.Event,
                   live: dict | None = None) -> dict:
    """Boot a full system from a throwaway overlay of its image and read it through the guest agent.

    Done when the agent answers, the balloon has reached its target (both host views), and the
    guest's MemTotal read twice a second apart agrees. The overlay and the domain never outlive the
    point (also when it is interrupted)."""
    from .guests import system

    libvirt, conn, guest, name, console_path = _begin(point, manifest, host, run_id)
    reader = None
    forward_port = 0
    if guest.reading == "ssh":
        reader, forward_port = _ssh_reader(guest, host, boot, name)
    overlay = host.create_overlay(name, boot["disk"], boot["format"])
    backing = memory_backing(host.spec.memory_backing, point.memory_mib, host_facts)
    balloon_model = manifest.balloon_model(host.spec)
    extra = _extra_cmdline(point, guest, host)
    hv = hypervisors.for_domain_type(domain_type)
    # memblock=debug: the kernel logs each boot reservation, read back once the system has settled
    debug = "memblock=debug" if hv.memblock_debug else ""
    cmdline = " ".join(x for x in ("root=/dev/vda rw console=ttyS0 panic=-1", debug, extra) if x)
    xml = hv.render(
        _spec(point, manifest, name=name, domain_type=domain_type, kernel=boot["kernel"], initrd=boot["initrd"],
              cmdline=cmdline, console=console_path, balloon_model=balloon_model, memory_backing=backing,
              disk=overlay, disk_format="qcow2", agent=guest.reading == "agent", forward_port=forward_port))
    started = _dt.datetime.now(_dt.timezone.utc)
    record: dict = {
        **point_identity(point, manifest),
        **host_fields(host_facts, domain_type, domain_type_reason),
        "guest_kernel": boot.get("release"), "guest_vcpus": guest.vcpus,
        "boot_method": "kernel" if boot["kernel"] else "firmware", "balloon_model": balloon_model,
        "memory_backing": backing, "started_at": started.isoformat(timespec="seconds"),
        "guest_kind": "system", "image": boot["label"], "reading": guest.reading,
        "memtotal_boot_kib": None, "memtotal_settled_kib": None, "free_m": None, "meminfo": None,
        "balloon": None, "balloon_timeline": [], "host_view": None, "dmesg": [], "oom_kills": [],
        "cross_check": None, "durations": {"boot_s": None, "settle_s": None, "total_s": None}, "phases": {},
        "console_excerpt": [],
    }
    if host.spec.guest_cmdline:
        record["kernel_parameters"] = host.spec.guest_cmdline
    inflates = point.memory_model == "balloon" and balloon_model == "virtio"
    _share_progress(live, record, point, inflates)
    t0 = time.monotonic()
    dom = None
    try:
        try:
            dom = conn.createXML(xml, 0)
        except libvirt.libvirtError as e:
            message = e.get_error_message() or str(e)
            record["status"] = "refused" if _REFUSED_RE.search(message) else "error"
            record["reason"] = one_line(message)
            return record
        target = point.current_memory_mib * 1024 if inflates else None
        if guest.reading == "console":
            _follow_console_system(dom, record, host=host, console_path=console_path, manifest=manifest, t0=t0,
                                   stop=stop, libvirt=libvirt, target_kib=target, system=system)
        else:
            _follow_system(dom, record, host=host, console_path=console_path, manifest=manifest, t0=t0, stop=stop,
                           libvirt=libvirt, target_kib=target, system=system,
                           reader=reader or system.AgentReader(dom))
        return record
    finally:
        if reader is not None:
            reader.close()
            if forward_port:  # the point's own known_hosts, written for its port
                for path in reader.known_hosts:
                    Path(path).unlink(missing_ok=True)
        raw = host.read_text(console_path)
        console = plain(raw, keep_newlines=True)  # what is stored holds no control characters
        if dom is not None:
            destroy(dom, libvirt)
        host.remove(overlay)  # after the domain: QEMU no longer holds it
        host.remove(console_path)
        record["durations"]["total_s"] = round(time.monotonic() - t0, 2)
        record["console_excerpt"] = excerpt(raw)
        record["dmesg"] = [" ".join(m.group(0).split())[:300] for m in _MEMORY_LINE_RE.finditer(console)]
        record["oom_kills"] = system.oom_kills(console)
        if record.get("set_aside_kib") is None and record["status"] in ("oom", "panic"):
            _set_aside_from_console(record, console)
        if record["status"] == "ok" and record["oom_kills"]:
            lost = [n for n in record["oom_kills"] if n in system.ESSENTIAL]
            if lost:
                record["status"] = "oom"
                record["reason"] = f"the OOM killer killed {', '.join(lost)}: the system lost what it needs"
            else:
                note = f"the OOM killer killed {', '.join(record['oom_kills'])} (the system lived on)"
                record["reason"] = "; ".join(x for x in (record["reason"], note) if x)


def _read_set_aside(record: dict, reader, system) -> None:
    """A settled full system's set-aside, itemized from its kernel log as the probe's is, with its
    MemTotal at boot from the kernel's totals and the zones' reserves (guests/setaside.py)."""
    from .guests.setaside import SYMBOLS_PATTERN, SYSCTLS, system_set_aside

    try:
        log = reader.run("/bin/dmesg", [])
        zoneinfo = reader.run("/bin/cat", ["/proc/zoneinfo"])
        sysctls = reader.run("/bin/cat", [f"/proc/sys/vm/{name}" for name in SYSCTLS])
    except system.ReadError as e:
        record["set_aside_notes"] = [f"the kernel's log and zones could not be read: {e}"]
        return
    try:  # no match (kallsyms hidden) is an answer: the sections' sizes stand in for the extent
        symbols = reader.run("/bin/grep", ["-E", SYMBOLS_PATTERN, "/proc/kallsyms"])
    except system.ReadError:
        symbols = ""
    read = system_set_aside(log, symbols, zoneinfo, sysctls, record["memory_mib"] * 1024)
    if read["found"]:
        record["set_aside_kib"] = read["found"]["items"]
        record["memtotal_boot_kib"] = read["memtotal_boot_kib"]
    record["set_aside_notes"] = read["notes"] + (read["found"] or {}).get("notes", []) + (
        ["MemTotal at boot is the kernel's own total (its balloon inflates before the system can be read)"]
        if read["found"] else [])
    if read["zone_reserves"]:
        record["zone_reserves"] = read["zone_reserves"]


def _set_aside_from_console(record: dict, console: str) -> None:
    """A full system that died before it could be read: its kernel's log as its console printed it
    (the same lines dmesg gives), itemized; no zones (nothing read them), so its margin is not stated."""
    from .guests.setaside import system_set_aside

    read = system_set_aside(console, "", "", "", record["memory_mib"] * 1024)
    if read["found"]:
        record["set_aside_kib"] = read["found"]["items"]
        if record.get("memtotal_boot_kib") is None:
            record["memtotal_boot_kib"] = read["memtotal_boot_kib"]
        record["set_aside_notes"] = read["notes"] + read["found"]["notes"] + [
            "read from the console (the system died before it could be read); MemTotal at boot is the kernel's "
            "own total"]


def _cross_check(record: dict, source: str) -> tuple:
    """The guest's own MemTotal (read via `source`) against the balloon's `available` statistic,
    which should be the same number; recorded as `cross_check`. (available, MemTotal, agree)."""
    available = (record.get("balloon") or {}).get("available")
    total = record["memtotal_settled_kib"]
    agree = available is not None and total is not None and abs(int(available) - int(total)) <= 1024
    record["cross_check"] = {f"{source}_memtotal_kib": total, "balloon_available_kib": available, "agree": agree}
    return available, total, agree


def _ssh_reader(guest, host: HostRuntime, boot: dict, name: str):
    """(SSHReader, loopback port to forward to the guest's port 22, or 0) for a guest read over SSH.

    `address: forwarded`: the guest gets QEMU's user network with a free loopback port of this machine
    forwarded to its sshd, and the tool's own Debian image's keys (made when it was built) log in and
    verify it. Otherwise the guest is reached at its address, its key checked against
    guests[].ssh.known_hosts and ~/.ssh/known_hosts, through the host's SSH connection if the host
    is remote."""
    import os

    from .guests import system
    from .manifest import parse_address
    from .safe import free_port, private_dir, write_nofollow

    if guest.address == "forwarded":
        port = free_port()
        known = private_dir(host.cache_dir / "ssh") / f"{name}.known_hosts"
        key_type, key_b64 = boot["host_key"].split()[:2]
        write_nofollow(known, f"[127.0.0.1]:{port} {key_type} {key_b64}\n".encode())
        return system.SSHReader("127.0.0.1", port, "root", boot["client_key"], [str(known)]), port
    address, port = parse_address(guest.address)
    known = [p for p in (guest.ssh.known_hosts, os.path.expanduser("~/.ssh/known_hosts"),
                         "/etc/ssh/ssh_known_hosts") if p and os.path.isfile(p)]
    gateway = getattr(host, "connection", None) if host.spec.is_remote else None
    return system.SSHReader(address, port or guest.ssh.port, guest.ssh.user,
                            guest.ssh.key, known, gateway), 0


def _follow_console_system(dom, record: dict, *, host: HostRuntime, console_path: str, manifest: Manifest,
                           t0: float, stop: threading.Event, libvirt, target_kib: int | None, system) -> None:
    """A full system without the agent: it runs guest/memballoon-report at boot, which prints the
    same markers as the probe on the serial console once the balloon has stopped moving."""
    timeouts = manifest.timeouts
    started_at = None
    for elapsed, console, alive in _console_ticks(dom, record, host=host, console_path=console_path, t0=t0,
                                                  stop=stop, libvirt=libvirt, poll=0.5):
        if started_at is None and console.has("report-start"):
            started_at = elapsed
            record["durations"]["boot_s"] = round(elapsed, 2)
        if console.has("done"):
            _final_sample(dom, record, alive, target_kib, t0, libvirt)
            break
        if not alive:
            time.sleep(0.3)
            _classify_death(record, Console.parse(host.read_text(console_path)))
            return
        if started_at is None and elapsed > timeouts.boot:
            record["status"] = "timeout"
            record["reason"] = (f"no report on the console within the boot timeout ({timeouts.boot:g} s); does the "
                                "image run guest/memballoon-report at boot?")
            return
        if started_at is not None and elapsed - started_at > timeouts.settle + 60:
            record["status"] = "timeout"
            record["reason"] = f"the report did not finish within the settle timeout ({timeouts.settle:g} s)"
            return
    _fill_guest_view(record, console, started_at)
    record["durations"]["settle_s"] = round(elapsed - started_at, 2) if started_at is not None else None
    available, total, agree = _cross_check(record, "console")
    if console.has("settle-timeout"):
        record["status"] = "timeout"
        record["reason"] = "the guest's balloon was still moving when its report gave up"
    elif record["free_m"] is None or total is None:
        record["status"] = "error"
        record["reason"] = "the console report could not be parsed"
    else:
        record["status"] = "ok"
        actual = (record.get("balloon") or {}).get("actual")
        notes = []
        if target_kib is not None and actual is not None and int(actual) > target_kib:
            notes.append(f"the balloon was at {int(actual) // 1024} MiB, not {target_kib // 1024} MiB, when the guest "
                         "reported")
        if not agree:
            notes.append(f"the console's MemTotal ({total} KiB) and the balloon's available ({available} KiB) disagree")
        record["reason"] = "; ".join(notes)


def _follow_system(dom, record: dict, *, host: HostRuntime, console_path: str, manifest: Manifest, t0: float,
                   stop: threading.Event, libvirt, target_kib: int | None, system, reader) -> None:
    """A full system read by `reader` (the guest agent, or SSH): wait until it answers, then until the
    balloon is at its target and MemTotal reads the same twice a second apart, then read it."""
    timeouts = manifest.timeouts
    agent_at = settled_at = None
    last_sample = -1.0
    last_total = None
    while True:
        if stop.is_set():
            raise StopRequested()
        elapsed = time.monotonic() - t0
        if not _alive(dom, libvirt):
            time.sleep(0.3)
            console = Console.parse(host.read_text(console_path))
            _classify_death(record, console)
            if record["status"] == "error":
                record["reason"] = "the system stopped before it could be read" + \
                    (f" (after {reader.what} answered)" if agent_at is not None else "")
            return
        if elapsed - last_sample >= 1.0:
            last_sample = elapsed
            _sample(dom, record, elapsed, libvirt)
        if agent_at is None:
            try:
                reader.ready()
                agent_at = elapsed
                record["durations"]["boot_s"] = round(elapsed, 2)
            except system.ReadError:
                if elapsed > timeouts.boot:
                    console = Console.parse(host.read_text(console_path))
                    _classify_death(record, console)
                    if record["status"] == "error":
                        record["status"] = "timeout"
                        record["reason"] = (f"{reader.what} did not answer within the boot timeout "
                                            f"({timeouts.boot:g} s); {reader.hint}")
                    return
                time.sleep(1.0)
                continue
        if elapsed - agent_at > timeouts.settle:
            record["status"] = "timeout"
            record["reason"] = f"the balloon had not settled {timeouts.settle:g} s after {reader.what} answered"
            return
        try:
            stats = dom.memoryStats()
            used = dom.info()[2]
        except libvirt.libvirtError:
            stats, used = {}, None
        at_target = target_kib is None or (stats.get("actual") is not None and int(stats["actual"]) <= target_kib
                                           and used is not None and int(used) <= target_kib)
        if at_target:
            try:
                total = system.parse_memtotal(reader.run("/bin/cat", ["/proc/meminfo"]))
            except system.ReadError:
                total = None
            if total is not None and total == last_total:
                settled_at = elapsed
                break
            last_total = total
        time.sleep(1.0)
    try:
        free = reader.run("/usr/bin/free", ["-m"])
        meminfo = reader.run("/bin/cat", ["/proc/meminfo"])
        release = reader.run("/bin/uname", ["-r"]).strip()
    except system.ReadError as e:
        record["status"] = "error"
        record["reason"] = f"{reader.what} stopped answering while the system was read: {e}"
        return
    _sample(dom, record, time.monotonic() - t0, libvirt)
    record["free_m"] = parse_free(free)
    record["meminfo"] = parse_meminfo(meminfo)
    record["memtotal_settled_kib"] = record["meminfo"].get("MemTotal")
    _read_set_aside(record, reader, system)
    if system.kernel_release(release):
        record["guest_kernel"] = release
    record["durations"]["settle_s"] = round(settled_at - agent_at, 2)
    available, agent_total, agree = _cross_check(record, reader.name)
    if record["free_m"] is None or agent_total is None:
        record["status"] = "error"
        record["reason"] = f"the readings of free -m and /proc/meminfo through {reader.what} could not be parsed"
        return
    record["status"] = "ok"
    if not agree:
        record["reason"] = (f"the guest's MemTotal ({agent_total} KiB, read via {reader.name}) and the balloon's "
                            f"available ({available} KiB) disagree")
