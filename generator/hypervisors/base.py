"""What a hypervisor is to the tool: how a domain is written for it, how its guests' consoles and
balloons are reached, how a refusal reads, and which factors and guest kinds it supports.

Everything that differs between QEMU/KVM and Xen lives in one subclass of `Hypervisor`; the rest
of the tool asks the hypervisor of a host or a domain type (`hypervisors.for_host`,
`hypervisors.for_domain_type`) and never checks which one it is. Adding a hypervisor is one module
here plus its line in `hypervisors/__init__.py`.
"""
from __future__ import annotations

import shlex
from typing import Any

from ..domain import DomainSpec


class Hypervisor:
    """The interface. Class attributes are facts; methods take the host they act on (duck-typed:
    anything with `run`, `workdir` and `spec`, so this package imports no host code)."""

    name: str = ""                       # family: 'qemu' (TCG and KVM) or 'xen'
    title: str = ""                      # how messages name the family: 'QEMU/KVM', 'Xen'
    domain_types: tuple[str, ...] = ()   # the libvirt <domain type=…> values it runs
    labels: dict[str, str] = {}          # domain type -> how posts name it
    emulated_twin: dict[str, str] = {}   # a hardware-accelerated domain type -> the one that emulates the same CPU
    uri_schemes: tuple[str, ...] = ()    # libvirt URI drivers that reach it
    uri_paths: tuple[str, ...] = ()      # the paths those URIs may have ('/system', …)
    host_kinds: tuple[str, ...] = ()     # manifest host kinds that are this hypervisor
    balloon: str = ""                    # the balloon model its guests get with balloon.model: auto
    balloons: tuple[str, ...] = ()       # balloon models it accepts
    inflating: tuple[str, ...] = ()      # those that inflate after boot, from memory down to currentMemory
    console_device: str = "ttyS0"        # the guest's console, for the kernel command line
    system_guests: bool = False          # can boot full-system guests (disk images)
    memory_backing: bool = False         # honours hosts[].memory_backing
    inflates_after_boot: bool = True     # guests boot with all of memory and the balloon takes it back
    factors: dict[str, tuple] = {}       # factor name -> values it supports (absent: any)
    boot: str | None = None              # a boot method it imposes on probes ('bzimage'), or None
    linear_loss: bool = True             # a guest's loss grows in a straight line with memory (posts fit one)
    no_guest_stats: str = ""             # why libvirt has no guest-side balloon statistics for it ('' = it has)
    memblock_debug: bool = True          # probes boot with memblock=debug (their set-aside itemized by caller)
    boot_words: dict[str, str] = {       # a record's boot_method -> how a post says its kernel was started
        "pvh": "through their PVH entry", "bzimage": "by the firmware from the compressed image",
        "kernel": "by the firmware from its own compressed kernel (the image's /boot/vmlinuz)",
        "firmware": "by the firmware from disk"}

    # -- the domain -------------------------------------------------------------------------------
    def render(self, spec: DomainSpec) -> str:
        """The domain XML of a spec, built with ElementTree (every value escaped by the library)."""
        raise NotImplementedError

    def label(self, domain_type: str) -> str:
        return self.labels.get(domain_type, domain_type)

    def emulates(self, domain_type: str) -> bool:
        """Whether guests of this domain type run on an emulated CPU (QEMU's TCG)."""
        return domain_type in self.emulated_twin.values()

    def supports(self, factor: str, value: Any) -> bool:
        allowed = self.factors.get(factor)
        return allowed is None or value in allowed

    # -- the host ---------------------------------------------------------------------------------
    def console_path(self, host, domain: str) -> str:
        """Where the guest's console is written on the host."""
        return f"{host.workdir()}/consoles/{domain}.log"

    def prepare_console(self, host, path: str) -> None:
        """An empty console file only its owner can read or write: libvirt opens file-backed serial
        consoles itself and hands QEMU the descriptor; a guest's console is evidence and must not be
        forgeable."""
        q = shlex.quote(path)
        host.run(f"rm -f {q} && (umask 077 && set -C && : > {q})", hide=True)

    def creation_failure(self, host, domain: str) -> str:
        """More about why the host refused to create a domain than libvirt's message says ('' if nothing)."""
        return ""

    def check_host(self, host) -> None:
        """Raise HostError if the host is set up so that guests could not be read."""

    def facts(self, host, hv_type: str, facts: dict) -> dict:
        """The host's facts (libvirt's node info and /proc, `facts`), completed with what only this
        hypervisor knows."""
        return facts
