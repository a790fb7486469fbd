"""What a measured point's domain is made of (DomainSpec), its name, and the probe's kernel command line.

The XML itself is written by the host's hypervisor (generator/hypervisors/)."""
from __future__ import annotations

from dataclasses import dataclass, fields

PREFIX = "mb-"  # every domain this tool starts is named so; leftovers with it are cleaned at start


def domain_name(run_id: str, point_key: str) -> str:
    """A recognisable, unique name: 'mb-<run>-<point>'."""
    return f"{PREFIX}{run_id}-{point_key}"[:60]


@dataclass(frozen=True)
class DomainSpec:
    """Everything a domain is made of, as data: the measuring code fills it, the host's hypervisor
    renders it (`hypervisors.render`). Every factor (manifest.FACTORS) has a field of its own name,
    filled from the point by `for_point`, so a new factor is its declaration, a field here, and the
    line in a hypervisor's `render` that turns it into XML."""

    name: str
    domain_type: str
    memory_mib: int
    current_memory_mib: int
    vcpus: int
    kernel: str
    initrd: str
    cmdline: str
    console: str
    balloon_model: str
    stats_period: float
    memory_backing: str = "default"
    memory_model: str = "balloon"
    autodeflate: bool = False
    free_page_reporting: bool = False
    cpu_model: str = "default"  # 'maximum': <cpu mode='maximum'/>
    plugged_mib: int = 0        # plugged into the running guest (plugging.py): nothing in the XML it boots with
    disk: str = ""              # a full system's overlay
    disk_format: str = "qcow2"
    agent: bool = False         # the QEMU guest agent's channel
    forward_port: int = 0       # a loopback port of this machine forwarded to the guest's sshd

    @classmethod
    def for_point(cls, factors: dict, **rest) -> "DomainSpec":
        """A spec with every factor's value from a point (`point.factors`) and the rest as given; a
        factor's value wins over the same field in `rest` (a guest's vcpus, when vcpus is swept)."""
        names = {f.name for f in fields(cls)}
        unknown = [k for k in factors if k not in names]
        if unknown:
            raise TypeError(f"DomainSpec has no field for factor(s) {', '.join(unknown)}: add one")
        return cls(**{**rest, **factors})


def kernel_cmdline(*, mode: str, stable: float, settle: float, balloon_kib: int, extra: str = "",
                   console: str = "ttyS0", memblock_debug: bool = True, hold: int = 30) -> str:
    """The probe's kernel command line: console on the serial port (hvc0 on Xen PV), panic =>
    reboot => destroy.

    balloon_kib: what the balloon must hold once inflated (memory - currentMemory); the probe ends
    as soon as it does. memblock_debug: the kernel logs each boot-time reservation (the set-aside is
    itemized from them); it only prints, so what the guest sees is the same either way. hold: seconds
    the probe stays up after reporting, telling MemTotal's changes (memory plugged and unplugged)."""
    parts = [f"console={console}", "loglevel=4", "panic=-1", "rdinit=/init",
             f"memballoon.mode={mode}", f"memballoon.stable={max(1, int(round(stable)))}",
             f"memballoon.settle={max(1, int(settle))}", f"memballoon.balloon_kib={max(0, int(balloon_kib))}",
             f"memballoon.hold={max(1, int(hold))}"] + (["memblock=debug"] if memblock_debug else [])
    if extra:
        parts.append(extra)
    return " ".join(parts)
