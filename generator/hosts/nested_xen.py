"""A Xen host the tool starts itself: Xen and a Debian dom0 inside QEMU on this machine (nested.py
does the starting, reaching and stopping; this is what is Xen's).

The dom0 disk is an image built from Debian's packages (see `images`): Xen 4.17, its tools,
libvirt's Xen driver and sshd. QEMU boots Xen (multiboot) with the dom0 kernel and initrd as
modules; dom0's init starts the Xen daemons, libvirtd and sshd. From then on it is an ordinary
remote Xen host over SSH and ``xen+ssh://``.
"""
from __future__ import annotations

from ..errors import UserError
from ..guests import images
from ..manifest import Host as HostSpec
from . import nested
from .nested import kill_leftovers, qemu_name  # noqa: F401 - part of this module's interface

# libvirtd's Xen driver refuses AMD-vendor CPU models; Haswell-noTSX works (no HVM under TCG: PV only).
CPU_MODEL = "Haswell-noTSX"

DOM0_START = r"""hostname dom0
for m in xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs; do
  modprobe "$m" || say "modprobe-failed $m"
done
mountpoint -q /proc/xen || mount -t xenfs xenfs /proc/xen
mkdir -p /var/log/xen/console
/etc/init.d/xen start > /var/log/xen-start.log 2>&1 || say "xen-start-failed"
"""

DOM0_COMMANDS = r"""
# libvirtd's QEMU driver (pulled in by libvirt-daemon) refuses to start without its user
id libvirt-qemu >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin libvirt-qemu
# every guest console is logged to /var/log/xen/console/guest-<name>.log: that is how the probe is read
echo 'XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console"' >> /etc/default/xen
echo dom0 > /etc/hostname
""" + images.SMALL_INITRAMFS + images.SSH_KEYS + r"""
# what QEMU boots: Xen (uncompressed: QEMU loads it as a multiboot ELF), dom0's kernel and initrd
gunzip -c /boot/xen-4.17-amd64.gz > /memballoon-export/xen
cp /boot/vmlinuz-* /memballoon-export/vmlinuz
cp /boot/initrd.img-* /memballoon-export/initrd.img
"""


class XenFlavor(nested.Flavor):
    def boot_args(self, spec: HostSpec, image: images.Image) -> list[str]:
        n = spec.nested
        xen, kernel, initrd = image.file("xen"), image.file("vmlinuz"), image.file("initrd.img")
        for path in (xen, kernel, initrd, image.disk):
            if "," in str(path) or " " in str(path):
                raise UserError(f"host {spec.name}: {path}: QEMU's multiboot module list cannot hold a path with "
                                "',' or a space; set MEMBALLOON_CACHE to a folder without them")
        xen_args = (f"console=com1 com1=115200,8n1 dom0_mem={n.dom0_memory}M,max:{n.dom0_memory}M "
                    f"dom0_max_vcpus=1 noreboot")
        dom0_args = "root=/dev/vda rw console=hvc0 earlyprintk=xen init=/usr/local/sbin/memballoon-nested-init"
        return ["-M", "q35", "-kernel", str(xen), "-append", xen_args, "-initrd", f"{kernel} {dom0_args},{initrd}"]

    def booting(self, spec: HostSpec) -> str:
        return (f"booting Xen with a {spec.nested.dom0_memory} MiB dom0 in QEMU ({spec.nested.memory} MiB, "
                f"{spec.nested.cpus} CPU, TCG); about a minute")

    def facts(self, spec: HostSpec) -> dict:
        return {"dom0_memory_mib": spec.nested.dom0_memory, "dom0_suite": spec.nested.suite}


XEN = XenFlavor(
    kind="nested-xen", title="Xen", uri_scheme="xen+ssh", cpu_model=CPU_MODEL, console="hvc0",
    image_name="xen-dom0", start=DOM0_START, commands=DOM0_COMMANDS, size_mib=2048,
    packages=("xen-hypervisor-4.17-amd64", "xen-utils-4.17", "xen-utils-common", "xenstore-utils",
              "libvirt-daemon", "libvirt-daemon-driver-xen", "libvirt-clients", "linux-image-amd64",
              "initramfs-tools", "kmod", "procps", "iproute2", "util-linux", "udev", "openssh-server",
              "netcat-openbsd"))


class NestedXenHost(nested.NestedHost):
    """A `kind: nested-xen` host: started on first use, then measured as any Xen host over SSH."""

    flavor = XEN
