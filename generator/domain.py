"""The libvirt domain XML of one measured point."""
from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

PREFIX = "mb-"  # every domain this tool starts is named so; leftovers with it are cleaned at start


def domain_name(run_id: str, point_key: str) -> str:
    """A recognisable, unique name: 'mb-<run>-<point>'."""
    return f"{PREFIX}{run_id}-{point_key}"[:60]


def domain_xml(*, name: str, domain_type: str, memory_mib: int, current_memory_mib: int, vcpus: int,
               kernel: str, initrd: str, cmdline: str, console: str, balloon_model: str,
               stats_period: float) -> str:
    """A transient domain that boots the probe straight from kernel + initramfs, console to a file.

    on_poweroff/on_reboot/on_crash=destroy: when the guest is done (or panics with panic=-1),
    the transient domain disappears by itself.
    """
    period = max(1, int(round(stats_period)))
    if balloon_model == "none":
        balloon = "<memballoon model='none'/>"
    else:
        balloon = f"<memballoon model={quoteattr(balloon_model)}><stats period='{period}'/></memballoon>"
    os_type = "xen" if domain_type == "xen" else "hvm"
    machine = "" if domain_type == "xen" else " machine='pc'"
    devices_serial = (f"<serial type='file'><source path={quoteattr(console)}/><target port='0'/></serial>"
                      "<console type='file'><source path=" + quoteattr(console) + "/>"
                      "<target type='serial' port='0'/></console>")
    return f"""<domain type={quoteattr(domain_type)}>
  <name>{escape(name)}</name>
  <memory unit='KiB'>{memory_mib * 1024}</memory>
  <currentMemory unit='KiB'>{current_memory_mib * 1024}</currentMemory>
  <vcpu>{vcpus}</vcpu>
  <os>
    <type arch='x86_64'{machine}>{os_type}</type>
    <kernel>{escape(kernel)}</kernel>
    <initrd>{escape(initrd)}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    {devices_serial}
    {balloon}
  </devices>
</domain>
"""


def kernel_cmdline(*, mode: str, stable: float, settle: float, balloon_kib: int, extra: str = "") -> str:
    """The probe's kernel command line: console on the serial port, panic => reboot => destroy.

    balloon_kib: what the balloon must hold once inflated (memory - currentMemory); the probe ends
    as soon as it does."""
    parts = ["console=ttyS0", "loglevel=4", "panic=-1", "rdinit=/init",
             f"memballoon.mode={mode}", f"memballoon.stable={max(1, int(round(stable)))}",
             f"memballoon.settle={max(1, int(settle))}", f"memballoon.balloon_kib={max(0, int(balloon_kib))}",
             "memballoon.hold=30"]
    if extra:
        parts.append(extra)
    return " ".join(parts)
