"""What is read of a point while and after it runs: the host's view of the domain (balloon statistics,
`virsh dominfo`), the guest's (its console's markers and sections), how a guest that stopped died,
and where the point's time went. Pure readings: the follow loop (follow.py) decides when to take them.
"""
from __future__ import annotations

import re
import time

from .guests.console import OOM_RE, PANIC_RE, Console, one_line, parse_free, parse_meminfo
from .text import bounded_int


def phases(record: dict, console: Console, clock: dict) -> dict:
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


def final_sample(dom, record: dict, running: bool, target_kib: int | None, t0: float, libvirt) -> None:
    """The guest said 'done': once the host's view of the balloon has caught up, the last sample."""
    if not running:
        return
    if target_kib is not None:
        wait_for_actual(dom, target_kib, libvirt)
        wait_for_fresh_stats(dom, time.time(), libvirt)
    sample(dom, record, time.monotonic() - t0, libvirt)


def wait_for_actual(dom, target_kib: int, libvirt, limit: float = 3.0) -> None:
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


def wait_for_fresh_stats(dom, since: float, libvirt, limit: float = 4.0) -> None:
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


def alive(dom, libvirt) -> bool:
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError:
        return False  # transient domain destroyed on poweroff/panic: it no longer exists


def sample(dom, record: dict, elapsed: float, libvirt) -> None:
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


def fill_guest_view(record: dict, console: Console, booted_at: float | None) -> None:
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


def classify_death(record: dict, console: Console) -> None:
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


def cross_check(record: dict, source: str) -> tuple:
    """The guest's own MemTotal (read via `source`) against the balloon's `available` statistic,
    which should be the same number; recorded as `cross_check`. (available, MemTotal, agree)."""
    available = (record.get("balloon") or {}).get("available")
    total = record["memtotal_settled_kib"]
    agree = available is not None and total is not None and abs(int(available) - int(total)) <= 1024
    record["cross_check"] = {f"{source}_memtotal_kib": total, "balloon_available_kib": available, "agree": agree}
    return available, total, agree


def read_set_aside(record: dict, reader, system) -> None:
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


def set_aside_from_console(record: dict, console: str) -> None:
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
