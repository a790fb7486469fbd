"""A KVM host the tool starts itself: Debian 12 with QEMU and libvirt's QEMU driver inside QEMU (TCG)
on this machine, whose own kernel runs the guests with KVM (nested.py does the starting, reaching and
stopping; this is what is KVM's).

TCG emulates AMD's SVM with nested paging when the outer CPU model is `max`, so `kvm_amd` loads in
the nested host and `/dev/kvm` there is the kernel's real KVM: the guests it runs are hardware-
virtualized as far as their kernel can tell (the same CPUID, the same paging, a KVM clock), only
slower, because the CPU that runs them is emulated. A host whose KVM does not come up says why in one
line (the kernel's own message), and nothing is measured on it.
"""
from __future__ import annotations

from ..guests import images
from ..manifest import Host as HostSpec
from . import nested
from .nested import kill_leftovers, qemu_name  # noqa: F401 - part of this module's interface

# TCG's `max` offers SVM with nested paging (NPT); kvm_amd needs both.
CPU_MODEL = "max"

KVM_START = r"""hostname kvmhost
for m in kvm kvm_amd; do
  modprobe "$m" 2>/tmp/modprobe.err || say "kvm-failed: modprobe $m: $(head -c 200 /tmp/modprobe.err | tr -cd '[:print:]')"
done
if [ ! -c /dev/kvm ]; then
  why=$(dmesg | grep -i -E 'kvm|svm' | tail -n 1 | cut -c1-200 | tr -cd '[:print:]')
  say "kvm-failed: /dev/kvm did not appear (${why:-the kernel said nothing about KVM})"
fi
"""

KVM_COMMANDS = r"""
id libvirt-qemu >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin libvirt-qemu
# no udev runs in this host: /dev/kvm stays root's, so QEMU runs as root (a throwaway machine of the tool's)
printf 'user = "root"\ngroup = "root"\n' >> /etc/libvirt/qemu.conf
echo kvmhost > /etc/hostname
""" + images.SMALL_INITRAMFS + images.SSH_KEYS + r"""
cp /boot/vmlinuz-* /memballoon-export/vmlinuz
cp /boot/initrd.img-* /memballoon-export/initrd.img
"""


class KVMFlavor(nested.Flavor):
    def boot_args(self, spec: HostSpec, image: images.Image) -> list[str]:
        args = "root=/dev/vda rw console=ttyS0 init=/usr/local/sbin/memballoon-nested-init"
        return ["-M", "q35", "-kernel", str(image.file("vmlinuz")), "-initrd", str(image.file("initrd.img")),
                "-append", args]

    def booting(self, spec: HostSpec) -> str:
        return (f"booting a KVM host in QEMU ({spec.nested.memory} MiB, {spec.nested.cpus} CPU, TCG, "
                f"CPU model {CPU_MODEL}); about a minute")

    def facts(self, spec: HostSpec) -> dict:
        return {"suite": spec.nested.suite, "accelerator": "kvm_amd (SVM with nested paging emulated by TCG)"}


KVM = KVMFlavor(
    kind="nested-kvm", title="KVM", uri_scheme="qemu+ssh", cpu_model=CPU_MODEL, console="ttyS0",
    image_name="kvm-host", start=KVM_START, commands=KVM_COMMANDS, size_mib=3072,
    packages=("qemu-system-x86", "libvirt-daemon", "libvirt-daemon-driver-qemu", "libvirt-clients",
              "linux-image-amd64", "initramfs-tools", "kmod", "procps", "iproute2", "util-linux", "udev",
              "openssh-server", "netcat-openbsd"))


class NestedKVMHost(nested.NestedHost):
    """A `kind: nested-kvm` host: started on first use, then measured as any KVM host over SSH."""

    flavor = KVM
