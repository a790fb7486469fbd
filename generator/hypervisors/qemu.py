"""QEMU, under TCG (`domain_type: qemu`) or KVM (`kvm`): probes booted straight from a kernel and an
initramfs, full systems from an overlay, a virtio balloon, console on the first serial port."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from ..domain import DomainSpec
from .base import Hypervisor

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("qemu", QEMU_NS)


class QEMU(Hypervisor):
    name = "qemu"
    title = "QEMU/KVM"
    domain_types = ("kvm", "qemu")
    labels = {"kvm": "KVM", "qemu": "QEMU (TCG)"}
    emulated_twin = {"kvm": "qemu"}
    uri_schemes = ("qemu",)
    uri_paths = ("/system", "/session")
    host_kinds = ("nested-kvm",)
    balloon = "virtio"
    balloons = ("virtio", "none")
    inflating = ("virtio",)
    system_guests = True
    memory_backing = True

    def render(self, spec: DomainSpec) -> str:
        """A transient domain that boots the probe straight from kernel + initramfs (or a full system
        from its overlay), console to a file.

        on_poweroff/on_reboot/on_crash=destroy: when the guest is done (or panics with panic=-1), the
        transient domain disappears by itself. memory_backing 'memfd': guest RAM is a shared memfd that
        the host does not commit up front, so a guest larger than the host can start (and the balloon
        gives the pages back by punching holes into it).

        memory_model: 'balloon' boots with all of memory and the balloon takes it down to
        currentMemory; 'virtio-mem' boots with currentMemory (one NUMA cell) and a virtio-mem device
        that can plug the rest, nothing plugged; 'dimm' boots with currentMemory and room (maxMemory,
        slots) for DIMMs up to memory, none plugged. Either way the guest's kernel sizes itself for
        currentMemory at boot."""
        s = spec
        dom = ET.Element("domain", type=s.domain_type)
        hotplug = s.memory_model in ("virtio-mem", "dimm") and s.memory_mib > s.current_memory_mib
        ET.SubElement(dom, "name").text = s.name
        if hotplug:
            ET.SubElement(dom, "maxMemory", slots="16" if s.memory_model == "dimm" else "1", unit="KiB").text = \
                str(s.memory_mib * 1024)
            boot_mib = s.current_memory_mib
        else:
            boot_mib = s.memory_mib
        ET.SubElement(dom, "memory", unit="KiB").text = str(boot_mib * 1024)
        ET.SubElement(dom, "currentMemory", unit="KiB").text = str(s.current_memory_mib * 1024)
        if s.memory_backing == "memfd":
            backing = ET.SubElement(dom, "memoryBacking")
            ET.SubElement(backing, "source", type="memfd")
            ET.SubElement(backing, "access", mode="shared")
        ET.SubElement(dom, "vcpu").text = str(s.vcpus)
        cpu = None
        if s.cpu_model == "maximum":  # all the accelerator offers (KVM: host-passthrough; TCG: QEMU's max)
            cpu = ET.SubElement(dom, "cpu", mode="maximum", check="none")
        if hotplug:  # memory devices need a NUMA topology
            numa = ET.SubElement(cpu if cpu is not None else ET.SubElement(dom, "cpu"), "numa")
            ET.SubElement(numa, "cell", id="0", cpus=f"0-{s.vcpus - 1}" if s.vcpus > 1 else "0",
                          memory=str(s.current_memory_mib * 1024), unit="KiB")
        os_el = ET.SubElement(dom, "os")
        ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
        if s.kernel:
            ET.SubElement(os_el, "kernel").text = s.kernel
            if s.initrd:
                ET.SubElement(os_el, "initrd").text = s.initrd
            ET.SubElement(os_el, "cmdline").text = s.cmdline
        else:  # a disk image with its own boot loader, started by the firmware
            ET.SubElement(os_el, "boot", dev="hd")
        ET.SubElement(ET.SubElement(dom, "features"), "acpi")
        for event in ("on_poweroff", "on_reboot", "on_crash"):
            ET.SubElement(dom, event).text = "destroy"
        devices = ET.SubElement(dom, "devices")
        serial = ET.SubElement(devices, "serial", type="file")
        ET.SubElement(serial, "source", path=s.console)
        ET.SubElement(serial, "target", port="0")
        cons = ET.SubElement(devices, "console", type="file")
        ET.SubElement(cons, "source", path=s.console)
        ET.SubElement(cons, "target", type="serial", port="0")
        if s.disk:  # a full system: its throwaway overlay (the image behind it is only read)
            d = ET.SubElement(devices, "disk", type="file", device="disk")
            ET.SubElement(d, "driver", name="qemu", type=s.disk_format, cache="unsafe")
            ET.SubElement(d, "source", file=s.disk)
            ET.SubElement(d, "target", dev="vda", bus="virtio")
        if s.agent:  # the QEMU guest agent's channel; libvirt picks the socket's place
            channel = ET.SubElement(devices, "channel", type="unix")
            ET.SubElement(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
        if hotplug and s.memory_model == "virtio-mem":
            mem = ET.SubElement(ET.SubElement(devices, "memory", model="virtio-mem"), "target")
            ET.SubElement(mem, "size", unit="KiB").text = str((s.memory_mib - s.current_memory_mib) * 1024)
            ET.SubElement(mem, "node").text = "0"
            ET.SubElement(mem, "block", unit="KiB").text = "2048"
            ET.SubElement(mem, "requested", unit="KiB").text = "0"
        options = {}
        if s.balloon_model == "virtio":
            if s.autodeflate:
                options["autodeflate"] = "on"
            if s.free_page_reporting:
                options["freePageReporting"] = "on"
        balloon = ET.SubElement(devices, "memballoon", model=s.balloon_model, **options)
        if s.balloon_model != "none":
            ET.SubElement(balloon, "stats", period=str(max(1, int(round(s.stats_period)))))
        if s.forward_port:  # QEMU's user network, one loopback port of the host forwarded to the guest's sshd
            args = ["-netdev", f"user,id=mbnet,hostfwd=tcp:127.0.0.1:{int(s.forward_port)}-:22",
                    "-device", "virtio-net-pci,netdev=mbnet,bus=pci.0,addr=0x1e"]  # a slot libvirt leaves free
            commandline = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
            for arg in args:
                ET.SubElement(commandline, f"{{{QEMU_NS}}}arg", value=arg)
        ET.indent(dom)
        return ET.tostring(dom, encoding="unicode") + "\n"
