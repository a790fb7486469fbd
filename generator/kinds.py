"""Guest kinds: what a manifest's guest is, how it is made ready on a host, and what its records are.
The probe (a kernel and a tiny initramfs that reports on its console) and the full
system (a disk image read through its agent, console or SSH) are the two kinds today; another kind
(a cloud image, another distribution's installer) is one more `GuestKind` here and its line in KINDS.
The sweep only asks `kind_of(guest)`; it never checks which kind it has. How a kind's point is measured
is its line in measure.MEASURERS (so that what publishes records, which asks `kind_of_record`, never
depends on what measures them); guests/ (how a guest is built and read) knows nothing of kinds.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import UserError
from .guests import probe, sources


@dataclass(frozen=True)
class Staged:
    """A guest made ready on a host: its files there, and (for kinds that can) the probe files that
    boot the KVM canary."""

    kind: "GuestKind"
    boot: dict
    canary: tuple | None = None   # (kernel, initrd, release, boot method) or None


class GuestKind:
    name = ""
    # Nothing but the tool's own init runs in the guest: its MemTotal at boot is read before the balloon
    # inflates, and what it has in use at boot is the probe's (a busybox), not a distribution's.
    bare = False
    boots_as = "of another kind of guest"         # how a post counts its boots: '24 of a full system'
    kernels_as = "other guests' kernels"          # how a post names its kernels: 'probe kernels'

    def claims(self, guest) -> bool:
        raise NotImplementedError

    def stage(self, host, guest, *, manifest, cache_dir: Path, note: Callable[[str], None]) -> Staged:
        """Build what the guest needs (cached) and put it on the host."""
        raise NotImplementedError


def stage_probe(host, kernel: str, modules: str, boot: str, balloon_model: str, cache_dir: Path) -> tuple:
    """The probe of a kernel on the host: (kernel, initrd, release, boot method)."""
    built = probe.build(kernel, modules, cache_dir, balloon_model)
    image, method = built.boot_image(host.hypervisor.boot or boot)  # Xen PV boots the bzImage
    return (host.stage(image, f"probe-{built.sha256[:16]}-{image.name}"),
            host.stage(built.initrd, f"probe-{built.sha256[:16]}-initrd.img"), built.release, method)


class ProbeKind(GuestKind):
    """A kernel booted straight into a ~1 MB initramfs that loads the balloon and reports."""

    name = "probe"
    bare = True
    boots_as = "of the probe"
    kernels_as = "probe kernels"

    def claims(self, guest) -> bool:
        return not guest.image

    def stage(self, host, guest, *, manifest, cache_dir, note) -> Staged:
        files = stage_probe(host, guest.kernel, guest.modules, guest.boot, manifest.balloon_model(host.spec), cache_dir)
        return Staged(self, {"kernel": files[0], "initrd": files[1], "release": files[2], "boot_method": files[3]},
                      canary=files)


class SystemKind(GuestKind):
    """A whole system from a disk image (the tool's Debian, or yours), booted from a throwaway overlay."""

    name = "system"
    boots_as = "of a full system"
    kernels_as = "the full system's kernel"

    def claims(self, guest) -> bool:
        return bool(guest.image)

    def stage(self, host, guest, *, manifest, cache_dir, note) -> Staged:
        """The disk (and kernel, when booted directly) on the host."""
        g = guest
        if not host.run("command -v qemu-img || true", hide=True, warn=True).stdout.strip():
            raise UserError(f"host {host.name}: full-system guests boot from qemu-img overlays, and qemu-img is "
                            "not installed there (Debian: qemu-utils; here: make deps)")
        named = sources.parse(g.image)
        if named:  # a distribution's release: the tool builds the system
            source, release = named
            img = source.build_image(release, g.reading, cache_dir, note)
            disk, fmt = img.disk, "raw"
            kernel, initrd = img.file("vmlinuz"), img.file("initrd.img")
            tag = img.folder.name
        else:
            disk = Path(g.image)
            fmt = g.image_format()
            why = g.check_image()  # again: the file may have changed since the manifest was read
            if why:
                raise UserError(f"guest {g.name}: image {disk}: {why}")
            kernel, initrd = (Path(g.kernel), Path(g.initrd) if g.initrd else None) if g.kernel_file else (None, None)
            tag = f"image-{disk.stem}"[:40]
        keys = {}
        if named and g.reading == "ssh":  # made when the image was built
            keys = {"host_key": img.file("host_key.pub").read_text(), "client_key": str(img.file("client_key"))}
        return Staged(self, {**keys, "disk": host.stage(disk, f"{tag}-{disk.name}"), "format": fmt,
                             "kernel": host.stage(kernel, f"{tag}-vmlinuz") if kernel else "",
                             "initrd": host.stage(initrd, f"{tag}-initrd.img") if initrd else "",
                             "release": probe.kernel_release(kernel) if kernel else None,
                             "label": g.image if named else disk.name})


KINDS: tuple[GuestKind, ...] = (SystemKind(), ProbeKind())


UNKNOWN = GuestKind()  # a record's kind that no registered kind has (a record from a newer or another tool)
UNKNOWN.name = "unknown"


def kind_of(guest) -> GuestKind:
    """The kind of a manifest's guest: the first in KINDS that claims it."""
    return next(k for k in KINDS if k.claims(guest))


def kind_of_record(record) -> GuestKind:
    """The kind of guest a record measured: its `guest_kind`; a record without one is the probe's
    (records before full systems were measured)."""
    name = record.get("guest_kind") or ProbeKind.name
    return next((k for k in KINDS if k.name == name), UNKNOWN)
