"""The libvirt domain XML of one measured point."""
from __future__ import annotations

import xml.etree.ElementTree as ET

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("qemu", QEMU_NS)
PREFIX = "mb-"  # every domain this tool starts is named so; leftovers with it are cleaned at start


def domain_name(run_id: str, point_key: str) -> str:
    """A recognisable, unique name: 'mb-<run>-<point>'."""
    return f"{PREFIX}{run_id}-{point_key}"[:60]


def domain_xml(*, name: str, domain_type: str, memory_mib: int, current_memory_mib: int, vcpus: int,
               kernel: str, initrd: str, cmdline: str, console: str, balloon_model: str,
               stats_period: float, memory_backing: str = "default", memory_model: str = "balloon",
               autodeflate: bool = False, free_page_reporting: bool = False, disk: str = "",
               disk_format: str = "qcow2", agent: bool = False, forward_port: int = 0) -> str:
    """A transient domain that boots the probe straight from kernel + initramfs, console to a file.

    Built with ElementTree, so every value is escaped by the library. on_poweroff/on_reboot/
    on_crash=destroy: when the guest is done (or panics with panic=-1), the transient domain
    disappears by itself. memory_backing 'memfd': guest RAM is a shared memfd that the host does
    not commit up front, so a guest larger than the host can start (and the balloon gives the pages
    back by punching holes into it).

    memory_model: 'balloon' boots with all of memory and the balloon takes it down to currentMemory;
    'virtio-mem' boots with currentMemory (one NUMA cell) and a virtio-mem device that can plug the
    rest, nothing plugged; 'dimm' boots with currentMemory and room (maxMemory, slots) for DIMMs up to
    memory, none plugged. Either way the guest's kernel sizes itself for currentMemory at boot."""
    if domain_type == "xen":
        return xen_pv_xml(name=name, memory_mib=memory_mib, current_memory_mib=current_memory_mib, vcpus=vcpus,
                          kernel=kernel, initrd=initrd, cmdline=cmdline)
    dom = ET.Element("domain", type=domain_type)
    hotplug = memory_model in ("virtio-mem", "dimm") and memory_mib > current_memory_mib
    ET.SubElement(dom, "name").text = name
    if hotplug:
        ET.SubElement(dom, "maxMemory", slots="16" if memory_model == "dimm" else "1", unit="KiB").text = \
            str(memory_mib * 1024)
        boot_mib = current_memory_mib
    else:
        boot_mib = memory_mib
    ET.SubElement(dom, "memory", unit="KiB").text = str(boot_mib * 1024)
    ET.SubElement(dom, "currentMemory", unit="KiB").text = str(current_memory_mib * 1024)
    if memory_backing == "memfd":
        backing = ET.SubElement(dom, "memoryBacking")
        ET.SubElement(backing, "source", type="memfd")
        ET.SubElement(backing, "access", mode="shared")
    ET.SubElement(dom, "vcpu").text = str(vcpus)
    if hotplug:  # memory devices need a NUMA topology
        numa = ET.SubElement(ET.SubElement(dom, "cpu"), "numa")
        ET.SubElement(numa, "cell", id="0", cpus=f"0-{vcpus - 1}" if vcpus > 1 else "0",
                      memory=str(current_memory_mib * 1024), unit="KiB")
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    if kernel:
        ET.SubElement(os_el, "kernel").text = kernel
        if initrd:
            ET.SubElement(os_el, "initrd").text = initrd
        ET.SubElement(os_el, "cmdline").text = cmdline
    else:  # a disk image with its own boot loader, started by the firmware
        ET.SubElement(os_el, "boot", dev="hd")
    ET.SubElement(ET.SubElement(dom, "features"), "acpi")
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        ET.SubElement(dom, event).text = "destroy"
    devices = ET.SubElement(dom, "devices")
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=console)
    ET.SubElement(serial, "target", port="0")
    cons = ET.SubElement(devices, "console", type="file")
    ET.SubElement(cons, "source", path=console)
    ET.SubElement(cons, "target", type="serial", port="0")
    if disk:  # a full system: its throwaway overlay (the image behind it is only read)
        d = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(d, "driver", name="qemu", type=disk_format, cache="unsafe")
        ET.SubElement(d, "source", file=disk)
        ET.SubElement(d, "target", dev="vda", bus="virtio")
    if agent:  # the QEMU guest agent's channel; libvirt picks the socket's place
        channel = ET.SubElement(devices, "channel", type="unix")
        ET.SubElement(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
    if hotplug and memory_model == "virtio-mem":
        mem = ET.SubElement(ET.SubElement(devices, "memory", model="virtio-mem"), "target")
        ET.SubElement(mem, "size", unit="KiB").text = str((memory_mib - current_memory_mib) * 1024)
        ET.SubElement(mem, "node").text = "0"
        ET.SubElement(mem, "block", unit="KiB").text = "2048"
        ET.SubElement(mem, "requested", unit="KiB").text = "0"
    options = {}
    if balloon_model == "virtio":
        if autodeflate:
            options["autodeflate"] = "on"
        if free_page_reporting:
            options["freePageReporting"] = "on"
    balloon = ET.SubElement(devices, "memballoon", model=balloon_model, **options)
    if balloon_model != "none":
        ET.SubElement(balloon, "stats", period=str(max(1, int(round(stats_period)))))
    if forward_port:  # QEMU's user network, one loopback port of the host forwarded to the guest's sshd
        args = ["-netdev", f"user,id=mbnet,hostfwd=tcp:127.0.0.1:{int(forward_port)}-:22",
                "-device", "virtio-net-pci,netdev=mbnet,bus=pci.0,addr=0x1e"]  # a slot libvirt leaves free
        commandline = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
        for arg in args:
            ET.SubElement(commandline, f"{{{QEMU_NS}}}arg", value=arg)
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode") + "\n"


def xen_pv_xml(*, name: str, memory_mib: int, current_memory_mib: int, vcpus: int, kernel: str, initrd: str,
               cmdline: str) -> str:
    """A Xen PV domain booting the probe: Xen builds it with currentMemory populated and memory as its
    ceiling (the rest is ballooned out from the start), console on hvc0, which xenconsoled logs."""
    dom = ET.Element("domain", type="xen")
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory", unit="KiB").text = str(memory_mib * 1024)
    ET.SubElement(dom, "currentMemory", unit="KiB").text = str(current_memory_mib * 1024)
    ET.SubElement(dom, "vcpu").text = str(vcpus)
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="xenpv").text = "linux"
    ET.SubElement(os_el, "kernel").text = kernel
    ET.SubElement(os_el, "initrd").text = initrd
    ET.SubElement(os_el, "cmdline").text = cmdline
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        ET.SubElement(dom, event).text = "destroy"
    devices = ET.SubElement(dom, "devices")
    console = ET.SubElement(devices, "console", type="pty")
    ET.SubElement(console, "target", type="xen", port="0")
    ET.SubElement(devices, "memballoon", model="xen")
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode") + "\n"


def kernel_cmdline(*, mode: str, stable: float, settle: float, balloon_kib: int, extra: str = "",
                   console: str = "ttyS0") -> str:
    """The probe's kernel command line: console on the serial port (hvc0 on Xen PV), panic =>
    reboot => destroy.

    balloon_kib: what the balloon must hold once inflated (memory - currentMemory); the probe ends
    as soon as it does."""
    parts = [f"console={console}", "loglevel=4", "panic=-1", "rdinit=/init",
             f"memballoon.mode={mode}", f"memballoon.stable={max(1, int(round(stable)))}",
             f"memballoon.settle={max(1, int(settle))}", f"memballoon.balloon_kib={max(0, int(balloon_kib))}",
             "memballoon.hold=30"]
    if extra:
        parts.append(extra)
    return " ".join(parts)
