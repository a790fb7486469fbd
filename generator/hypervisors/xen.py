"""Xen through libvirt's libxl driver: probes as PV guests, which Xen builds with currentMemory
populated and memory as their ceiling; Xen's own balloon; consoles logged by xenconsoled."""
from __future__ import annotations

import re
import shlex
import xml.etree.ElementTree as ET

from ..domain import DomainSpec
from ..errors import HostError
from .base import Hypervisor

XL_INFO_LIMIT = 256 * 1024   # `xl info` prints a few KiB; more is not Xen talking
XL_TEXT_LIMIT = 200          # characters kept of a text field (the command line is the longest)
# Xen's console daemon writes each guest's console here when started with
# XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console" (in /etc/default/xen).
XEN_CONSOLE_DIR = "/var/log/xen/console"


class Xen(Hypervisor):
    name = "xen"
    title = "Xen"
    domain_types = ("xen",)
    labels = {"xen": "Xen"}
    uri_schemes = ("xen", "libxl")
    uri_paths = ("", "/", "/system")
    host_kinds = ("nested-xen",)
    balloon = "xen"
    balloons = ("xen", "none")
    console_device = "hvc0"
    inflates_after_boot = False  # a PV guest is built with currentMemory populated
    # its guests here use Xen's balloon: the virtio balloon's options and QEMU's hotplug are not there
    factors = {"memory_model": ("balloon",), "autodeflate": (False,), "free_page_reporting": (False,),
               "cpu_model": ("default",), "plugged_mib": (0,)}
    boot = "bzimage"             # PV boots the compressed kernel (no PVH entry through libvirt here)
    boot_words = {"bzimage": "as PV domains from the compressed image", "kernel": "as PV domains"}
    no_guest_stats = "libvirt's libxl driver gives no guest-side statistics"
    # A PV guest logs thousands of early reservations with memblock=debug (its page lists): the kernel's
    # log buffer overflows and the boot's first lines, Xen's memory map among them, are lost. Its
    # set-aside is itemized from the kernel's totals and Xen's map instead (guests/setaside.py).
    memblock_debug = False
    linear_loss = False          # a PV guest's loss stops growing once its boot-time memory map is capped

    def render(self, spec: DomainSpec) -> str:
        """A Xen PV domain booting the probe: Xen builds it with currentMemory populated and memory as
        its ceiling (the rest is ballooned out from the start), console on hvc0, which xenconsoled logs."""
        s = spec
        dom = ET.Element("domain", type="xen")
        ET.SubElement(dom, "name").text = s.name
        ET.SubElement(dom, "memory", unit="KiB").text = str(s.memory_mib * 1024)
        ET.SubElement(dom, "currentMemory", unit="KiB").text = str(s.current_memory_mib * 1024)
        ET.SubElement(dom, "vcpu").text = str(s.vcpus)
        os_el = ET.SubElement(dom, "os")
        ET.SubElement(os_el, "type", arch="x86_64", machine="xenpv").text = "linux"
        ET.SubElement(os_el, "kernel").text = s.kernel
        ET.SubElement(os_el, "initrd").text = s.initrd
        ET.SubElement(os_el, "cmdline").text = s.cmdline
        for event in ("on_poweroff", "on_reboot", "on_crash"):
            ET.SubElement(dom, event).text = "destroy"
        devices = ET.SubElement(dom, "devices")
        console = ET.SubElement(devices, "console", type="pty")
        ET.SubElement(console, "target", type="xen", port="0")
        ET.SubElement(devices, "memballoon", model="xen")
        ET.indent(dom)
        return ET.tostring(dom, encoding="unicode") + "\n"

    def console_path(self, host, domain: str) -> str:
        return f"{XEN_CONSOLE_DIR}/guest-{domain}.log"

    def prepare_console(self, host, path: str) -> None:
        """xenconsoled creates the log itself: only an old one of the same name is removed."""
        host.run(f"rm -f {shlex.quote(path)}", hide=True)

    def creation_failure(self, host, domain: str) -> str:
        """Why Xen could not build a domain, from libxl's log (libvirt's own message only says that it
        failed): its last error lines about the domain, shortened."""
        out = host.run("tail -n 300 /var/log/libvirt/libxl/libxl-driver.log 2>/dev/null || true",
                       hide=True, warn=True).stdout
        lines = [ln for ln in out.splitlines() if ("error" in ln.lower() or "fail" in ln.lower())]
        picked = [re.sub(r"^[0-9: .+-]+", "", ln).strip() for ln in lines[-3:]]  # without the time stamp
        return "; ".join(p for p in picked if p)[:300]

    def check_host(self, host) -> None:
        """The probe is read from xenconsoled's logs: say how to turn them on if they are off."""
        out = host.run("ps -eo args 2>/dev/null | grep '^[^ ]*xenconsoled' || true", hide=True, warn=True).stdout
        if "--log=guest" not in out and "--log=all" not in out and "-l guest" not in out:
            raise HostError(f"host {host.name}: xenconsoled does not log guest consoles, and the probe is read "
                            "from them; set XENCONSOLED_ARGS=\"--log=guest --log-dir=/var/log/xen/console\" in "
                            "/etc/default/xen and restart xenconsoled")

    def facts(self, host, hv_type: str, facts: dict) -> dict:
        """With what `xl info` says: Xen's version, its memory (total, free), its command line, dom0's
        kernel. The machine is Xen's: its CPUs and memory, not dom0's share of them, and guests take
        Xen's free memory, not dom0's."""
        if hv_type != "Xen":
            return facts
        xen = parse_xl_info(host.run("xl info 2>/dev/null || true", hide=True, warn=True).stdout)
        facts = dict(facts, xen=xen)
        if xen.get("free_mib") is not None:
            facts["memory_available_mib"] = xen["free_mib"]
        facts["cores"] = xen.get("cpus") or facts["cores"]
        facts["memory_mib"] = xen.get("total_mib") or facts["memory_mib"]
        return facts


def parse_xl_info(out: str) -> dict:
    """`xl info`'s `key : value` lines into the facts a record keeps. The host is not trusted: numbers
    are ASCII digits of sane length or nothing, text fields one printable line of bounded length."""
    info: dict[str, str] = {}
    for line in str(out)[:XL_INFO_LIMIT].splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if sep and re.fullmatch(r"[a-z_0-9]{1,40}", key) and key not in info:
            info[key] = value.strip()

    def num(key: str) -> int | None:
        value = info.get(key, "")
        return int(value) if re.fullmatch(r"[0-9]{1,12}", value) else None

    def text(key: str) -> str | None:
        value = "".join(c if c.isprintable() else " " for c in info.get(key, ""))
        value = " ".join(value.split())[:XL_TEXT_LIMIT]
        return value or None

    major, minor = num("xen_major"), num("xen_minor")
    extra = info.get("xen_extra", "")
    version = (f"{major}.{minor}" + (extra if re.fullmatch(r"[0-9A-Za-z.+~_-]{0,40}", extra) else "")
               if major is not None and minor is not None else None)
    return {"version": version, "total_mib": num("total_memory"), "free_mib": num("free_memory"),
            "cpus": num("nr_cpus"), "caps": text("xen_caps"), "virt_caps": text("virt_caps"),
            "commandline": text("xen_commandline"), "dom0_kernel": text("release"),
            "scheduler": text("xen_scheduler")}
