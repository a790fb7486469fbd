"""How commands, files and libvirt reach a hypervisor host: this machine (local.py), a host over SSH
(ssh.py), or a Xen or KVM host the tool boots nested in QEMU (nested.py: nested_xen.py, nested_kvm.py). `runtime_for` picks one for a
manifest's host; the sweep sees only the interface in base.py."""
from __future__ import annotations

from pathlib import Path

from ..manifest import Host as HostSpec
from .base import HostRuntime, embed_root, libvirt_module, qemu_processes
from .local import LocalHost
from .nested_kvm import NestedKVMHost
from .nested_xen import NestedXenHost
from .ssh import HostKeyPolicy, SSHHost


def runtime_for(spec: HostSpec, cache_dir: Path, note=None, stop=None) -> HostRuntime:
    """The runtime of a manifest's host; `note` hears progress of long steps (building, booting),
    `stop` (an Event) interrupts them."""
    if spec.is_nested:
        kind = {NestedXenHost.flavor.kind: NestedXenHost, NestedKVMHost.flavor.kind: NestedKVMHost}[spec.kind]
        return kind(spec, cache_dir, note, stop)
    return SSHHost(spec, cache_dir) if spec.is_remote else LocalHost(spec, cache_dir)


__all__ = ["HostRuntime", "LocalHost", "SSHHost", "NestedXenHost", "NestedKVMHost", "HostKeyPolicy", "runtime_for", "embed_root",
           "libvirt_module", "qemu_processes"]
