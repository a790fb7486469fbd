"""A fake host and libvirt that drive measure() without booting anything: the domain's console is a
script of (seconds after creation, text) the fake reveals as time passes, its balloon reaches the
target when the script says 'settled', and it powers off at 'done' or when the script ends in a
death. For the logic of the polling loop, the readings and the failure classes; real guests are
booted by tests/integration."""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import libvirt

from generator.hosts.base import HostRuntime
from generator.manifest import Host

DATA = Path(__file__).resolve().parents[1] / "data" / "setaside"


class ScriptedDomain:
    def __init__(self, xml: str, script: list[tuple[float, str]], memory_kib: int, target_kib: int,
                 ends: bool = True):
        self.xml, self.script, self.memory_kib, self.target_kib, self.ends = xml, script, memory_kib, target_kib, ends
        self.t0 = time.monotonic()
        self.destroyed = False
        self.calls: list[str] = []

    def _now(self) -> float:
        return time.monotonic() - self.t0

    def console(self) -> str:
        return "".join(text for at, text in self.script if at <= self._now())

    def _settled(self) -> bool:
        return "settled-memtotal-kib" in self.console()

    def isActive(self):
        if self.destroyed:
            return False
        return not (self.ends and self._now() > self.script[-1][0] + 0.2)

    def memoryStats(self):
        self.calls.append("memoryStats")
        actual = self.target_kib if self._settled() else self.memory_kib
        return {"actual": actual, "available": actual - 40000, "last_update": int(time.time())}

    def info(self):
        actual = self.target_kib if self._settled() else self.memory_kib
        return [1, self.memory_kib, actual, 1, 0]

    def setMemoryStatsPeriod(self, period, flags=0):
        self.calls.append(f"setMemoryStatsPeriod {period}")

    def destroy(self):
        self.destroyed = True
        return 0

    def name(self):
        return "fake"


class FakeConn:
    def __init__(self, make):
        self.make = make
        self.domains: list[ScriptedDomain] = []

    def createXML(self, xml, flags=0):
        dom = self.make(xml)
        self.domains.append(dom)
        return dom

    def close(self):
        return 0


class FakeHost(HostRuntime):
    """A HostRuntime whose libvirt is FakeConn: commands and files never reach a machine (run, put and get
    are the base class's NotImplementedError); a console is read by the path its domain's XML names."""

    def __init__(self, make, spec: Host | None = None):
        super().__init__(spec or Host(name="local", uri="embedded", domain_type="qemu"), Path("/nonexistent-cache"))
        self.conn = FakeConn(make)
        self.removed: list[str] = []

    def connect(self):
        return self.conn

    def console_path(self, name: str) -> str:
        return f"/fake/consoles/{name}.log"

    def prepare_console(self, path: str) -> None:
        pass

    def read_text(self, path: str) -> str:
        dom = next((d for d in reversed(self.conn.domains) if path in d.xml), None)
        return dom.console() if dom else ""

    def remove(self, path: str) -> None:
        self.removed.append(path)

    def creation_failure(self, name: str) -> str:
        return ""

    def close(self) -> None:
        pass


M = "@@MEMBALLOON"


def probe_console(memory_mib: int, current_mib: int, *, dies: bool = False) -> list[tuple[float, str]]:
    """A probe's console for the Debian 12 kernel at `memory_mib`, from a real boot's captured sections
    (tests/data/setaside), with the balloon's part written for `current_mib`."""
    capture = (DATA / f"qemu-6.1.0-57-amd64-{memory_mib}.txt").read_text()
    boot = int(capture.split(f"{M} boot-memtotal-kib ")[1].split()[0])
    sections = capture[capture.index(f"{M} begin memblock"):]
    start = [(0.05, f"{M} init 0.5\n{M} kernel 6.1.0-57-amd64\n{M} boot-memtotal-kib {boot}\n"),
             (0.1, sections), (0.15, f"{M} balloon-loaded 0.9\n{M} inflate-start 1.0\n")]
    if dies:
        return start + [(0.3, "[    2.1] Out of memory: Killed process 77 (usleep) total-vm:2260kB\n"
                              "[    2.2] Kernel panic - not syncing: System is deadlocked on memory\n")]
    settled = boot - (memory_mib - current_mib) * 1024
    free_total = settled // 1024
    return start + [(0.3, f"{M} inflate-end 1.2\n{M} balloon-kib {(memory_mib - current_mib) * 1024}\n"
                          f"{M} settled 1.3\n{M} settled-memtotal-kib {settled}\n"
                          f"{M} begin free\n              total        used        free      shared  buff/cache   available\n"
                          f"Mem:         {free_total:>6}          20      {free_total - 40:>6}           0          22      {free_total - 30:>6}\n"
                          f"{M} end free\n{M} begin meminfo\nMemTotal:       {settled} kB\nMemFree:        {settled - 60000} kB\n"
                          f"{M} end meminfo\n{M} begin dmesg\n[    0.1] Memory: 1K/2K available\n{M} end dmesg\n{M} done 1.4\n")]


# --- a whole host for the sweep -----------------------------------------------------------------------
class SweepConn(FakeConn):
    """A connection that keeps every domain it made, in order, and how many ran at once."""

    def __init__(self, make, kvm: bool = False):
        super().__init__(make)
        self.kvm = kvm
        self.lock = threading.Lock()
        self.most_at_once = 0

    def createXML(self, xml, flags=0):
        with self.lock:
            dom = super().createXML(xml, flags)
            running = sum(1 for d in self.domains if d.isActive())
            self.most_at_once = max(self.most_at_once, running)
            return dom

    def getDomainCapabilities(self, *args):
        if not self.kvm:
            raise libvirt.libvirtError("KVM is not available")
        return "<domainCapabilities/>"


class SweepHost(FakeHost):
    """The parts of a HostRuntime the sweep uses: a connection, leftovers of an earlier run, facts,
    and each domain's own console (read by the console path the domain XML names)."""

    def __init__(self, name: str, make, *, memory_available_mib: int = 16384, cores: int = 2,
                 leftovers: tuple[str, ...] = (), fails: Exception | None = None, kvm: bool = False):
        super().__init__(make, Host(name=name, uri="embedded", domain_type="qemu"))
        self.conn = SweepConn(make, kvm=kvm)
        self.closed = False
        self.fails = fails
        self.leftovers = list(leftovers)
        self.memory_available_mib, self.cores = memory_available_mib, cores

    def connect(self):
        if self.fails:
            raise self.fails
        return self.conn

    def check_console_logging(self) -> None:
        pass

    def clean_leftovers(self) -> list[str]:
        found, self.leftovers = self.leftovers, []
        return found

    def remove_leftover_overlays(self) -> list[str]:
        return []

    def facts(self) -> dict:
        return {"name": self.name, "hostname": f"{self.name}.test", "hypervisor": "QEMU 8.2.2", "qemu_version": "8.2.2",
                "kernel": "6.1.0-57-amd64", "libvirt_version": "10.0.0", "cores": self.cores, "memory_mib": 32768,
                "memory_available_mib": self.memory_available_mib}

    def close(self) -> None:
        self.closed = True


_MEMORY_RE = re.compile(r"<memory unit=.KiB.>(\d+)</memory>")
_CURRENT_RE = re.compile(r"<currentMemory unit=.KiB.>(\d+)</currentMemory>")


def probe_domain(xml: str, *, seconds: float = 0.0, dies: bool = False, never: bool = False) -> ScriptedDomain:
    """A probe guest for the domain XML the measuring code wrote: it reports as the real probe does for
    its memory and currentMemory (1, 4 or 16 GiB: the captured boots), `seconds` later than a real
    fast boot, and runs until destroyed; `dies` runs out of memory while the balloon inflates;
    `never` reports nothing and runs until destroyed; a canary answers and powers off."""
    memory_kib = int(_MEMORY_RE.search(xml).group(1))
    current_kib = int(_CURRENT_RE.search(xml).group(1))
    if "canary" in xml:
        return ScriptedDomain(xml, [(0.05, f"{M} canary-ok\n")], memory_kib, current_kib)
    if never:
        return ScriptedDomain(xml, [(99.0, "never")], memory_kib, memory_kib, ends=False)
    script = [(at + seconds, text) for at, text in probe_console(memory_kib // 1024, current_kib // 1024, dies=dies)]
    # A guest that dies is gone (on_crash=destroy); one that reported stays up, as the real probe does,
    # until the sweep destroys it.
    return ScriptedDomain(xml, script, memory_kib, current_kib, ends=dies)
