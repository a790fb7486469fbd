"""The probe's initramfs (generator/guests/probe.py): its contents, module closures, and the modules
folders it refuses."""
from __future__ import annotations

import gzip
import lzma
import os
import struct
from pathlib import Path

import pytest

from generator.errors import UserError
from generator.guests import probe


def read_newc(data: bytes) -> dict:
    """A minimal newc reader, independent of the writer: name -> (mode, bytes)."""
    out, pos = {}, 0
    while True:
        assert data[pos:pos + 6] == b"070701", f"bad magic at {pos}"
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[pos + 110: pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        body = data[pos: pos + size]
        pos = (pos + size + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, body)


def fake_ko(name: str, extra: str = "") -> bytes:
    """A minimal ELF64 relocatable object with a .modinfo section, as a kernel module has."""
    info = f"name={name}\0depends=\0{extra}".encode()
    shstr = b"\0.modinfo\0.shstrtab\0"
    body = info + shstr
    shoff = 64 + len(body)
    head = bytearray(64)
    head[:7] = b"\x7fELF\x02\x01\x01"
    struct.pack_into("<HHIQQQIHHHHHH", head, 16, 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2)
    sections = bytes(64)
    sections += struct.pack("<IIQQQQIIQQ", 1, 1, 2, 0, 64, len(info), 0, 0, 1, 0)
    sections += struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, 64 + len(info), len(shstr), 0, 0, 1, 0)
    return bytes(head) + body + sections


def fake_modules(tmp_path: Path, compress: str = "") -> Path:
    d = tmp_path / "lib/modules/6.9.9-test"
    v = d / "kernel/drivers/virtio"
    v.mkdir(parents=True)
    names = ["virtio", "virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "virtio_balloon"]
    for n in names:
        data = fake_ko(n)
        path = v / f"{n}.ko{compress}"
        path.write_bytes(lzma.compress(data) if compress == ".xz" else gzip.compress(data) if compress == ".gz" else data)
    k = f"kernel/drivers/virtio/%s.ko{compress}"
    (d / "modules.dep").write_text(
        f"{k % 'virtio_pci'}: {k % 'virtio_pci_legacy_dev'} {k % 'virtio_pci_modern_dev'} {k % 'virtio'} {k % 'virtio_ring'}\n"
        f"{k % 'virtio_balloon'}: {k % 'virtio'} {k % 'virtio_ring'}\n"
        f"{k % 'virtio'}: {k % 'virtio_ring'}\n{k % 'virtio_ring'}:\n"
        f"{k % 'virtio_pci_modern_dev'}:\n{k % 'virtio_pci_legacy_dev'}:\n")
    (d / "modules.builtin").write_text("kernel/drivers/block/loop.ko\n")
    return d


def host_virtio_modules() -> Path:
    release = probe.kernel_release(probe.find_host_kernel())
    return Path("/lib/modules") / release


def fake_bzimage(path: Path, release: str) -> Path:
    image = bytearray(0x4000)
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x20E, 0x1000)
    version = f"{release} (builder@example) #1 SMP".encode()
    image[0x1200:0x1200 + len(version)] = version
    path.write_bytes(bytes(image))
    return path


def test_cpio_roundtrip():
    blob = probe.build_cpio([("bin", 0o040755, b""), ("bin/x", 0o100755, b"abcde"), ("e", 0o100644, b"")])
    entries = read_newc(blob)
    assert entries == {"bin": (0o040755, b""), "bin/x": (0o100755, b"abcde"), "e": (0o100644, b"")}
    assert len(blob) % 512 == 0


def test_initramfs_contents_and_reproducible():
    mods = [("virtio", b"\x7fELF-virtio"), ("virtio_balloon", b"\x7fELF-balloon")]
    a = probe.initramfs(b"BUSYBOX", mods)
    assert a == probe.initramfs(b"BUSYBOX", mods)  # same inputs, same bytes (no times inside)
    entries = read_newc(gzip.decompress(a))
    assert entries["bin/busybox"] == (0o100755, b"BUSYBOX")
    assert entries["init"][0] == 0o100755 and entries["init"][1].startswith(b"#!/bin/busybox sh")
    assert entries["etc/probe-modules"][1] == b"virtio\nvirtio_balloon\n"
    assert entries["lib/modules/probe/virtio_balloon.ko"][1] == b"\x7fELF-balloon"
    init = entries["init"][1].decode()
    for marker in ("boot-memtotal-kib", "settled-memtotal-kib", "begin free", "begin meminfo", "done", "poweroff -f"):
        assert marker in init


@pytest.mark.parametrize("compress", ["", ".xz", ".gz"])
def test_module_closure_dependencies_first_and_decompressed(tmp_path, compress):
    d = fake_modules(tmp_path, compress)
    order = probe.module_closure(d, probe.VIRTIO_MODULES)
    names = [n for n, _ in order]
    assert names == ["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
                     "virtio_balloon"]
    assert probe.read_module(order[-1][1]) == fake_ko("virtio_balloon")


def test_builtin_modules_are_skipped(tmp_path):
    d = fake_modules(tmp_path)
    (d / "modules.builtin").write_text("kernel/drivers/virtio/virtio_ring.ko\nkernel/drivers/virtio/virtio.ko\n")
    names = [n for n, _ in probe.module_closure(d, ("virtio_balloon",))]
    assert names == ["virtio_balloon"]


def test_missing_module_is_a_clear_error(tmp_path):
    d = fake_modules(tmp_path)
    with pytest.raises(UserError, match="no module 'virtio_mem'"):
        probe.module_closure(d, ("virtio_mem",))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no module 'virtio'"):
        probe.module_closure(tmp_path / "empty", ("virtio",))  # no modules.dep and no modules
    with pytest.raises(UserError, match="nowhere: missing"):
        probe.module_closure(tmp_path / "nowhere", ("virtio",))


def test_modinfo_of_a_real_module():
    path = next((host_virtio_modules() / "kernel/drivers/virtio").glob("virtio_balloon.ko*"))
    info = probe.modinfo(probe.read_module(path))
    assert set(info["depends"].split(",")) == {"virtio", "virtio_ring"}
    assert info["name"] == "virtio_balloon" and "vermagic" in info


def test_without_modules_dep_the_closure_comes_from_modinfo_of_xz_modules(tmp_path):
    """Debian's kernel packages ship .ko.xz (Debian 13) and no modules.dep: read each module's depends."""
    src = host_virtio_modules()
    expected = probe.module_closure(src, probe.VIRTIO_MODULES)
    dest = tmp_path / "modules"
    for name, path in expected:
        target = dest / "kernel/drivers/virtio" / f"{name}.ko.xz"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(lzma.compress(probe.read_module(path), format=lzma.FORMAT_XZ))
    got = probe.module_closure(dest, probe.VIRTIO_MODULES)
    names = [n for n, _ in got]
    assert sorted(names) == sorted(n for n, _ in expected)
    for name, path in got:  # every module comes after what it depends on
        for dep in probe.modinfo(probe.read_module(path)).get("depends", "").split(","):
            if dep:
                assert names.index(dep) < names.index(name)
    assert probe.read_module(got[-1][1]) == probe.read_module(dict(expected)["virtio_balloon"])


def test_kernel_release_from_the_bzimage_header(tmp_path):
    assert probe.kernel_release(fake_bzimage(tmp_path / "vmlinuz", "6.9.9-test")) == "6.9.9-test"
    (tmp_path / "junk").write_bytes(b"x" * 0x400)
    with pytest.raises(UserError, match="not a Linux bzImage"):
        probe.kernel_release(tmp_path / "junk")


def test_build_is_cached_by_content(tmp_path):
    kernel = fake_bzimage(tmp_path / "vmlinuz-6.9.9-test", "6.9.9-test")
    mods = fake_modules(tmp_path)
    cache = tmp_path / "cache"
    a = probe.build(str(kernel), str(mods), cache)
    assert a.release == "6.9.9-test" and a.modules[-1] == "virtio_balloon"
    stamp = a.initrd.stat().st_mtime_ns
    b = probe.build(str(kernel), str(mods), cache)
    assert b == a and b.initrd.stat().st_mtime_ns == stamp  # reused, not rebuilt
    (mods / "kernel/drivers/virtio/virtio_balloon.ko").write_bytes(fake_ko("virtio_balloon", "version=2\0"))
    c = probe.build(str(kernel), str(mods), cache)
    assert c.sha256 != a.sha256 and c.initrd != a.initrd


def test_host_kernel_on_this_machine():
    image = probe.find_host_kernel()
    release = probe.kernel_release(image)
    assert release and (Path("/lib/modules") / release / "modules.dep").exists()


def test_dynamic_busybox_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(probe, "BUSYBOX_CANDIDATES", ("/bin/ls",))
    with pytest.raises(UserError, match="busybox-static"):
        probe.find_busybox()


def test_a_symlinked_module_never_reaches_the_initramfs(tmp_path):
    d = fake_modules(tmp_path)
    target = d / "kernel/drivers/virtio/virtio_balloon.ko"
    target.unlink()
    target.symlink_to("/etc/shadow")
    with pytest.raises(UserError, match="not a regular file inside the folder"):
        probe.module_closure(d, probe.VIRTIO_MODULES)


def test_modules_dep_cannot_name_files_outside_the_folder(tmp_path):
    d = fake_modules(tmp_path)
    dep = (d / "modules.dep").read_text()
    (d / "modules.dep").write_text(dep.replace("kernel/drivers/virtio/virtio_ring.ko", "/etc/virtio_ring.ko"))
    with pytest.raises(UserError, match="not a module file inside the folder"):
        probe.module_closure(d, probe.VIRTIO_MODULES)
    (d / "modules.dep").write_text(dep.replace("kernel/drivers/virtio/virtio_ring.ko", "../../../../etc/virtio_ring.ko"))
    with pytest.raises(UserError, match="not a module file inside the folder"):
        probe.module_closure(d, probe.VIRTIO_MODULES)


def test_only_kernel_modules_go_into_a_guest(tmp_path):
    with pytest.raises(UserError, match="not a kernel module"):
        probe.check_module(tmp_path / "x.ko", b"#!/bin/sh\ncat /etc/shadow\n")
    with pytest.raises(UserError, match="not a kernel module"):
        probe.check_module(tmp_path / "x.ko", b"\x7fELF\x02\x01" + b"\xff" * 100)  # ELF header, nonsense inside


def test_a_decompression_bomb_is_not_a_module(tmp_path):
    import lzma

    bomb = tmp_path / "virtio.ko.xz"
    bomb.write_bytes(lzma.compress(b"\0" * (probe.MAX_MODULE_BYTES + 4096)))
    assert bomb.stat().st_size < 1024 * 1024
    with pytest.raises(UserError, match="decompresses to more than"):
        probe.read_module(bomb)


def test_a_fifo_as_modules_dep_does_not_hang(tmp_path):
    d = fake_modules(tmp_path)
    (d / "modules.dep").unlink()
    os.mkfifo(d / "modules.dep")
    with pytest.raises(UserError, match="not a regular file"):
        probe.module_closure(d, probe.VIRTIO_MODULES)
