"""A fake libvirt connection and domains, for audit's logic without a hypervisor (the integration
tests audit real guests under a real libvirtd). Each domain records every call that would change
something, so a test can prove an audit changed nothing."""
from __future__ import annotations

import time
from xml.sax.saxutils import escape

import libvirt

GIB = 1024 * 1024  # KiB


def domain_xml(name: str, memory_kib: int, current_kib: int, *, period: int | None = 5, balloon: bool = True,
               title: str = "", kernel: str = "", agent: bool = False, dtype: str = "kvm") -> str:
    stats = f"<stats period='{period}'/>" if period else ""
    mb = f"<memballoon model='virtio'>{stats}</memballoon>" if balloon else "<memballoon model='none'/>"
    ch = ("<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>" if agent else "")
    name = "".join(c for c in name if c.isprintable())  # XML 1.0 has no control characters; dom.name() may
    return (f"<domain type='{dtype}'><name>{escape(name)}</name><title>{escape(title)}</title>"
            f"<memory unit='KiB'>{memory_kib}</memory><currentMemory unit='KiB'>{current_kib}</currentMemory>"
            f"<os><type>hvm</type>{f'<kernel>/boot/vmlinuz-{kernel}</kernel>' if kernel else ''}</os>"
            f"<devices>{mb}{ch}</devices></domain>")


class FakeDomain:
    def __init__(self, name: str, memory_kib: int, current_kib: int, sees_kib: int | None, *, period: int | None = 5,
                 balloon: bool = True, title: str = "", kernel: str = "", agent: bool = False, dtype: str = "kvm",
                 vanish: bool = False, persistent: bool = True, state: int = 1):
        self._name, self.memory_kib, self.current_kib, self.sees_kib = name, memory_kib, current_kib, sees_kib
        self.period, self.balloon, self.title, self.kernel, self.agent, self.dtype = (period, balloon, title, kernel,
                                                                                      agent, dtype)
        self.vanish, self.persistent, self.state = vanish, persistent, state
        self.changes: list[tuple] = []

    def _gone(self):
        if self.vanish:
            err = libvirt.libvirtError("Domain not found: no domain with matching name")
            err.err = (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_FROM_QEMU, "Domain not found", 2, "", None, None, 0, 0)
            raise err

    def name(self):
        return self._name

    def XMLDesc(self, flags=0):
        self._gone()
        return domain_xml(self._name, self.memory_kib, self.current_kib, period=self.period, balloon=self.balloon,
                          title=self.title, kernel=self.kernel, agent=self.agent, dtype=self.dtype)

    def info(self):
        self._gone()
        return [self.state, self.memory_kib, self.current_kib, 1, 0]

    def isPersistent(self):
        return self.persistent

    def memoryStats(self):
        self._gone()
        stats = {"actual": self.current_kib, "rss": self.current_kib}
        if self.sees_kib is not None:  # without a period: the figures of the guest's boot, never updated
            stats.update(available=self.sees_kib if self.period else self.memory_kib, unused=self.sees_kib // 2,
                         last_update=int(time.time()) - (0 if self.period else 3600))
        return stats

    def setMemoryStatsPeriod(self, period, flags=0):
        self.changes.append(("setMemoryStatsPeriod", period, flags))
        self.period = period


class FakeConn:
    def __init__(self, domains: list[FakeDomain]):
        self.domains = domains
        self.closed = False

    def listAllDomains(self, flags=0):
        return list(self.domains)

    def close(self):
        self.closed = True
        return 0
