"""Following a running point until it has reported, died or run out of time: one loop (`follow`),
with what is watched as the part that varies (`Watch`): the probe's console, a full system's report
on its console, a full system read through its agent or SSH.

The loop owns what every guest shares: stopping when asked, the host's samples of the balloon (at most
once a second), noticing that the domain stopped, and the boot and settle deadlines. A watch says
when the guest started and finished, and what its death, its timeouts and its end mean.
"""
from __future__ import annotations

import time

from . import readings
from .errors import StopRequested
from .guests.console import Console, parse_free, parse_meminfo
from .text import bounded_int


class Watch:
    """What one kind of guest is watched for. Subclasses set `poll` (seconds between looks) and
    `settle_margin` (seconds past timeouts.settle a started guest is given), and implement `look`."""

    poll = 0.5
    settle_margin = 60.0

    def __init__(self, run, dom, record: dict, console_path: str, t0: float, libvirt):
        self.run, self.dom, self.record, self.console_path, self.t0, self.libvirt = \
            run, dom, record, console_path, t0, libvirt
        self.timeouts = run.manifest.timeouts
        self.started: float | None = None   # seconds since t0 when the guest was first heard from
        self.elapsed = 0.0

    def console(self) -> Console:
        return Console.parse(self.run.host.read_text(self.console_path))

    def conclude(self, status: str, reason: str) -> None:
        self.record["status"], self.record["reason"] = status, reason

    # -- what varies ----------------------------------------------------------------------------------
    def look(self, elapsed: float) -> bool:
        """Read the guest again; True once it has finished reporting."""
        raise NotImplementedError

    def died(self) -> bool:
        """The domain stopped: record why. True if it had finished reporting after all."""
        readings.classify_death(self.record, self.console())
        return False

    def boot_timeout(self) -> None:
        self.conclude("timeout", f"the guest did not report within the boot timeout ({self.timeouts.boot:g} s)")

    def settle_timeout(self) -> None:
        self.conclude("timeout", f"the guest did not finish within the settle timeout ({self.timeouts.settle:g} s)")

    def finish(self, running: bool) -> None:
        """The guest finished reporting (`running`: its domain still runs): the last readings and the status."""
        raise NotImplementedError


def follow(watch: Watch) -> None:
    """Poll the guest through `watch` until it finishes, dies, runs out of time or the run stops."""
    run, dom, libvirt = watch.run, watch.dom, watch.libvirt
    last_sample = -1.0
    while True:
        if run.stop.is_set():
            raise StopRequested()
        elapsed = watch.elapsed = time.monotonic() - watch.t0
        running = readings.alive(dom, libvirt)
        if running and elapsed - last_sample >= 1.0:
            last_sample = elapsed
            readings.sample(dom, watch.record, elapsed, libvirt)
        if watch.look(elapsed):
            watch.finish(running)
            return
        if not running:
            time.sleep(0.3)  # the console's last lines reach its file after the domain is gone
            if watch.died():
                watch.finish(False)
            return
        if watch.started is None and elapsed > watch.timeouts.boot:
            watch.boot_timeout()
            return
        if watch.started is not None and elapsed - watch.started > watch.timeouts.settle + watch.settle_margin:
            watch.settle_timeout()
            return
        time.sleep(watch.poll)


class ProbeWatch(Watch):
    """The probe: its init prints markers on the serial console, 'init' when it starts and 'done' when
    it has read everything. `clock` gathers when the host saw them, for the point's phases."""

    def __init__(self, *args, clock: dict):
        super().__init__(*args)
        self.clock = clock
        self.poll = 0.1 if not self.run.host.spec.is_remote else 0.5 if self.run.host.spec.is_nested else 1.0
        self.seen = Console.parse("")

    def look(self, elapsed: float) -> bool:
        self.seen = self.console()
        if self.started is None and self.seen.has("init"):
            self.started = self.clock["init_seen"] = elapsed
        if self.seen.has("done"):
            self.clock["done_seen"] = elapsed
            return True
        return False

    def died(self) -> bool:
        self.seen = self.console()
        if self.seen.has("done"):
            return True
        readings.classify_death(self.record, self.seen)
        readings.fill_guest_view(self.record, self.seen, self.started)
        return False

    def boot_timeout(self) -> None:
        super().boot_timeout()
        readings.fill_guest_view(self.record, self.seen, self.started)

    def settle_timeout(self) -> None:
        super().settle_timeout()
        readings.fill_guest_view(self.record, self.seen, self.started)

    def finish(self, running: bool) -> None:
        """The guest knows first that its balloon holds the target; the host hears of it through QEMU's
        balloon events, at most once a second: the last sample waits (up to 3 s) for the host's view."""
        record, console = self.record, self.seen
        target = None if console.has("balloon-short") else self.run.target_kib
        readings.final_sample(self.dom, record, running, target, self.t0, self.libvirt)
        readings.fill_guest_view(record, console, self.started)
        settle = self.timeouts.settle
        if console.has("settle-timeout"):
            self.conclude("timeout", f"the balloon was still inflating after {settle:g} s")
        elif record["memtotal_settled_kib"] is None:
            self.conclude("error", "the probe finished without reporting MemTotal")
        elif record["free_m"] is None or record["free_m"].get("total") is None:
            self.conclude("error", "the probe finished without reporting free -m")
        else:
            notes = [f"insmod failed: {v}" for k, v in console.markers.items() if k == "insmod-failed"]
            short = [bounded_int(v) for v in console.markers.get("balloon-short", "").split()]
            if len(short) == 2 and None not in short:
                notes.append(f"the balloon stopped at {short[0] // 1024} MiB of its {short[1] // 1024} MiB "
                             "target (nothing changed for the stability window)")
            self.conclude("ok", "; ".join(notes)[:400])


class ConsoleReportWatch(Watch):
    """A full system without the agent: it runs guest/memballoon-report at boot, which prints the
    same markers as the probe on the serial console once the balloon has stopped moving."""

    def __init__(self, *args):
        super().__init__(*args)
        self.seen = Console.parse("")

    def look(self, elapsed: float) -> bool:
        self.seen = self.console()
        if self.started is None and self.seen.has("report-start"):
            self.started = elapsed
            self.record["durations"]["boot_s"] = round(elapsed, 2)
        return self.seen.has("done")

    def boot_timeout(self) -> None:
        self.conclude("timeout", f"no report on the console within the boot timeout ({self.timeouts.boot:g} s); does "
                             "the image run guest/memballoon-report at boot?")

    def settle_timeout(self) -> None:
        self.conclude("timeout", f"the report did not finish within the settle timeout ({self.timeouts.settle:g} s)")

    def finish(self, running: bool) -> None:
        record, target = self.record, self.run.target_kib
        readings.final_sample(self.dom, record, running, target, self.t0, self.libvirt)
        readings.fill_guest_view(record, self.seen, self.started)
        record["durations"]["settle_s"] = round(self.elapsed - self.started, 2) if self.started is not None else None
        available, total, agree = readings.cross_check(record, "console")
        if self.seen.has("settle-timeout"):
            self.conclude("timeout", "the guest's balloon was still moving when its report gave up")
        elif record["free_m"] is None or total is None:
            self.conclude("error", "the console report could not be parsed")
        else:
            actual = (record.get("balloon") or {}).get("actual")
            notes = []
            if target is not None and actual is not None and int(actual) > target:
                notes.append(f"the balloon was at {int(actual) // 1024} MiB, not {target // 1024} MiB, when the "
                             "guest reported")
            if not agree:
                notes.append(f"the console's MemTotal ({total} KiB) and the balloon's available ({available} KiB) "
                             "disagree")
            self.conclude("ok", "; ".join(notes))


class ReaderWatch(Watch):
    """A full system read by `reader` (the guest agent, or SSH): wait until it answers, then until the
    balloon is at its target and MemTotal reads the same twice a second apart, then read it."""

    poll = 1.0
    settle_margin = 0.0

    def __init__(self, *args, reader):
        from .guests import system

        super().__init__(*args)
        self.reader, self.system = reader, system
        self.last_total = None

    def look(self, elapsed: float) -> bool:
        reader, system = self.reader, self.system
        if self.started is None:
            try:
                reader.ready()
            except system.ReadError:
                return False
            self.started = elapsed
            self.record["durations"]["boot_s"] = round(elapsed, 2)
        target = self.run.target_kib
        try:
            stats, used = self.dom.memoryStats(), self.dom.info()[2]
        except self.libvirt.libvirtError:
            stats, used = {}, None
        if target is not None and not (stats.get("actual") is not None and int(stats["actual"]) <= target
                                       and used is not None and int(used) <= target):
            return False
        try:
            total = system.parse_memtotal(reader.run("/bin/cat", ["/proc/meminfo"]))
        except system.ReadError:
            total = None
        settled = total is not None and total == self.last_total
        self.last_total = total
        return settled

    def died(self) -> bool:
        readings.classify_death(self.record, self.console())
        if self.record["status"] == "error":
            self.record["reason"] = "the system stopped before it could be read" + \
                (f" (after {self.reader.what} answered)" if self.started is not None else "")
        return False

    def boot_timeout(self) -> None:
        readings.classify_death(self.record, self.console())
        if self.record["status"] == "error":
            self.conclude("timeout", f"{self.reader.what} did not answer within the boot timeout "
                                 f"({self.timeouts.boot:g} s); {self.reader.hint}")

    def settle_timeout(self) -> None:
        self.conclude("timeout", f"the balloon had not settled {self.timeouts.settle:g} s after {self.reader.what} "
                             "answered")

    def finish(self, running: bool) -> None:
        record, reader, system = self.record, self.reader, self.system
        settled_at = self.elapsed
        try:
            free = reader.run("/usr/bin/free", ["-m"])
            meminfo = reader.run("/bin/cat", ["/proc/meminfo"])
            release = reader.run("/bin/uname", ["-r"]).strip()
        except system.ReadError as e:
            self.conclude("error", f"{reader.what} stopped answering while the system was read: {e}")
            return
        readings.sample(self.dom, record, time.monotonic() - self.t0, self.libvirt)
        record["free_m"] = parse_free(free)
        record["meminfo"] = parse_meminfo(meminfo)
        record["memtotal_settled_kib"] = record["meminfo"].get("MemTotal")
        readings.read_set_aside(record, reader, system)
        if system.kernel_release(release):
            record["guest_kernel"] = release
        record["durations"]["settle_s"] = round(settled_at - self.started, 2)
        available, total, agree = readings.cross_check(record, reader.name)
        if record["free_m"] is None or total is None:
            self.conclude("error", f"the readings of free -m and /proc/meminfo through {reader.what} could not be parsed")
            return
        self.conclude("ok", "" if agree else f"the guest's MemTotal ({total} KiB, read via {reader.name}) and the "
                                         f"balloon's available ({available} KiB) disagree")
