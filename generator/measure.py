"""Measure one point: define the domain, boot the guest, read both views of memory, tear down.

A probe's view comes from its serial console (markers written by its init); a full system's from its
agent, SSH or its own report on the console; the host's view from libvirt: balloon statistics
(``virDomainMemoryStats``) sampled every second and what ``virsh dominfo`` shows (``virDomainGetInfo``).
Failures are results: a guest that runs out of memory or panics, a host that refuses the allocation,
a boot that times out. How the point is followed is follow.py; what is read, readings.py.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

from . import plugging
from .domain import DomainSpec, domain_name, kernel_cmdline
from .follow import ConsoleReportWatch, ProbeWatch, ReaderWatch, follow
from .guests.console import Console, excerpt, one_line
from .hosts import HostRuntime, libvirt_module
from .pointrun import PointRun, new_record
from .readings import destroy, phases, set_aside_from_console
from .text import plain

_REFUSED_RE = re.compile(r"cannot set up guest memory|Cannot allocate memory|cannot allocate|"
                         r"not enough memory|Insufficient free host memory|out of memory|"
                         r"failed to free memory|Failed to balloon domain0|claim.*memory|"
                         r"failed to allocate 0x[0-9a-f]+ pages", re.I)  # the last two: libxl building a domain


def _extra_cmdline(run: PointRun) -> str:
    """Kernel parameters beyond the tool's own: hotplugged memory online as movable, then the guest's
    and the host's (manifest keys guests[].cmdline, hosts[].guest_cmdline)."""
    return " ".join(x for x in ("memhp_default_state=online_movable" if run.point.memory_model != "balloon" else "",
                                run.guest.cmdline, run.host.spec.guest_cmdline) if x)


def _spec(run: PointRun, **rest) -> DomainSpec:
    """The domain of a point: every factor's value from the point, the guest's and the balloon's
    settings from the manifest, the rest (name, files, console) as the caller decided."""
    return DomainSpec.for_point(run.point.factors, vcpus=run.guest.vcpus, domain_type=run.domain_type,
                                stats_period=run.manifest.balloon.stats_period, balloon_model=run.balloon_model,
                                memory_backing=run.backing, **rest)


def _begin(run: PointRun):
    """What measuring a point starts with, for any kind of guest: libvirt, the connection, the
    domain's name and its console file, made ready."""
    libvirt, conn = libvirt_module(), run.host.connect()
    name = domain_name(run.run_id, f"{run.point.guest}-{run.point.short}")
    console_path = run.host.console_path(name)
    run.host.prepare_console(console_path)
    return libvirt, conn, name, console_path


def _create(run: PointRun, conn, libvirt, xml: str, name: str, record: dict):
    """The running domain, or None with the record saying why the host would not create it (a host
    that cannot find the memory is a result: 'refused')."""
    try:
        return conn.createXML(xml, 0)
    except libvirt.libvirtError as e:
        message = e.get_error_message() or str(e)
        detail = run.host.creation_failure(name)
        record["status"] = "refused" if _REFUSED_RE.search(message + " " + detail) else "error"
        record["reason"] = one_line(message + (f" ({detail})" if detail else ""))
        return None


def measure(run: PointRun, boot: dict, kind: str = "probe") -> dict:
    """Boot one point of a probe and return its record (a dict ready for JSON). Never leaves the domain
    running.

    boot: the staged probe: 'kernel' (the bzImage, or for boot_method 'pvh' the uncompressed vmlinux
    that QEMU starts through its PVH entry point, skipping firmware work and decompression), 'initrd',
    'release', 'boot_method'."""
    libvirt, conn, name, console_path = _begin(run)
    hv, point = run.hypervisor, run.point
    cmdline = kernel_cmdline(mode="measure", stable=run.manifest.timeouts.stable, settle=run.manifest.timeouts.settle,
                             balloon_kib=(point.memory_mib - point.current_memory_mib) * 1024 if run.inflates else 0,
                             extra=_extra_cmdline(run), console=hv.console_device, memblock_debug=hv.memblock_debug,
                             hold=plugging.HOLD_S if point.plugged_mib else 30)
    xml = hv.render(_spec(run, name=name, kernel=boot["kernel"], initrd=boot["initrd"], cmdline=cmdline,
                          console=console_path))
    record = new_record(run, kind, guest_kernel=boot["release"], boot_method=boot.get("boot_method", "bzimage"))
    run.share_progress(record)
    clock = {"t0": time.monotonic()}
    dom = None
    finished = False
    try:
        dom = _create(run, conn, libvirt, xml, name, record)
        if dom is None:
            return record
        clock["started"] = time.monotonic() - clock["t0"]
        follow(ProbeWatch(run, dom, record, console_path, clock["t0"], libvirt, clock=clock))
        if point.plugged_mib and record["status"] == "ok":
            plugging.plug_and_unplug(run, dom, libvirt, record, lambda: run.host.read_text(console_path))
        finished = True
        return record
    finally:
        console = run.host.read_text(console_path)  # nothing the guest prints after 'done' is read
        if dom is not None:
            if finished and run.teardown is not None:
                run.teardown(dom)
            else:
                destroy(dom, libvirt)
        run.host.remove(console_path)
        record["durations"]["total_s"] = round(time.monotonic() - clock["t0"], 2)
        record["console_excerpt"] = excerpt(console)
        record["phases"] = phases(record, Console.parse(console), clock)


# --- full systems ------------------------------------------------------------------------------------
_MEMORY_LINE_RE = re.compile(r"Memory: \d+K/\d+K available[^\n]*|software IO TLB: mapped[^\n]*")


def measure_system(run: PointRun, boot: dict, kind: str = "system") -> dict:
    """Boot a full system from a throwaway overlay of its image and read it through its agent, SSH or
    its report on the console.

    Done when the guest has answered, the balloon has reached its target (both host views), and the
    guest's MemTotal read twice a second apart agrees. The overlay and the domain never outlive the
    point (also when it is interrupted)."""
    from .guests import system

    libvirt, conn, name, console_path = _begin(run)
    guest, host, hv = run.guest, run.host, run.hypervisor
    reader, forward_port = _ssh_reader(guest, host, boot, name) if guest.reading == "ssh" else (None, 0)
    overlay = host.create_overlay(name, boot["disk"], boot["format"])
    # memblock=debug: the kernel logs each boot reservation, read back once the system has settled
    debug = "memblock=debug" if hv.memblock_debug else ""
    cmdline = " ".join(x for x in ("root=/dev/vda rw console=ttyS0 panic=-1", debug, _extra_cmdline(run)) if x)
    xml = hv.render(_spec(run, name=name, kernel=boot["kernel"], initrd=boot["initrd"], cmdline=cmdline,
                          console=console_path, disk=overlay, disk_format="qcow2", agent=guest.reading == "agent",
                          forward_port=forward_port))
    record = new_record(run, kind, guest_kernel=boot.get("release"), image=boot["label"], reading=guest.reading,
                        boot_method="kernel" if boot["kernel"] else "firmware", oom_kills=[], cross_check=None)
    run.share_progress(record)
    t0 = time.monotonic()
    dom = None
    try:
        dom = _create(run, conn, libvirt, xml, name, record)
        if dom is None:
            return record
        watched = (run, dom, record, console_path, t0, libvirt)
        follow(ConsoleReportWatch(*watched) if guest.reading == "console" else
               ReaderWatch(*watched, reader=reader or system.AgentReader(dom)))
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
        _judge_oom_kills(record, console, system)


def _judge_oom_kills(record: dict, console: str, system) -> None:
    """What the guest's OOM killer did: a system that lost what it needs is 'oom'; one that lost
    something else lived on (said in its reason). A system that died unread is itemized from its console."""
    record["oom_kills"] = system.oom_kills(console)
    if record.get("set_aside_kib") is None and record["status"] in ("oom", "panic"):
        set_aside_from_console(record, console)
    if record["status"] == "ok" and record["oom_kills"]:
        lost = [n for n in record["oom_kills"] if n in system.ESSENTIAL]
        if lost:
            record["status"] = "oom"
            record["reason"] = f"the OOM killer killed {', '.join(lost)}: the system lost what it needs"
        else:
            note = f"the OOM killer killed {', '.join(record['oom_kills'])} (the system lived on)"
            record["reason"] = "; ".join(x for x in (record["reason"], note) if x)


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


# How each kind of guest (kinds.py) is measured: its name -> (PointRun, its staged files, its name) -> record.
# A kind whose guests are measured as another's (a cloud image as a full system) names that one's here.
MEASURERS = {"probe": measure, "system": measure_system}


def measure_staged(run: PointRun, staged) -> dict:
    """Measure one point of a staged guest (kinds.Staged) by its kind's measuring; a kind without one
    is named."""
    how = MEASURERS.get(staged.kind.name)
    if how is None:
        raise ValueError(f"guest kind {staged.kind.name!r} has no measuring: add it to measure.MEASURERS")
    return how(run, staged.boot, staged.kind.name)
