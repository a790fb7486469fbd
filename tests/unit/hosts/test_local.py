"""The local host (generator/hosts/local.py): the embedded driver's root is private and per user."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from generator.errors import UserError


def local_host(tmp_path, root: Path):
    from generator.hosts import LocalHost
    from generator.manifest import Host

    os.environ["MEMBALLOON_EMBED_ROOT"] = str(root)
    try:
        return LocalHost(Host(name="local"), tmp_path / "cache")
    finally:
        del os.environ["MEMBALLOON_EMBED_ROOT"]


def test_planted_embed_roots_are_refused(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(UserError, match=r"accessible to others \(mode 0777\)"):
        local_host(tmp_path, shared).connect()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(UserError, match="found a symlink"):
        local_host(tmp_path, link).connect()
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    os.chown(other, 65534, 65534)  # nobody's folder
    with pytest.raises(UserError, match="belongs to uid 65534"):
        local_host(tmp_path, other).connect()
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "sweep.lock").symlink_to(victim)
    with pytest.raises(UserError, match="sweep.lock: cannot open .* a symlink there is refused"):
        local_host(tmp_path, private).connect()
    (private / "sweep.lock").unlink()
    (private / "etc").mkdir(mode=0o700, exist_ok=True)
    (private / "etc" / "qemu.conf").symlink_to(victim)
    with pytest.raises(UserError, match="qemu.conf: cannot write .* a symlink there is refused"):
        local_host(tmp_path, private).connect()
    assert victim.read_text() == "keep me"


def test_the_short_embed_root_is_private_and_per_user(tmp_path, monkeypatch):
    from generator.hosts import embed_root

    monkeypatch.delenv("MEMBALLOON_EMBED_ROOT", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    deep = tmp_path / ("x" * 60)
    root = embed_root(deep)
    assert root.parent == Path("/tmp") and root.name.startswith(f"memballoon-{os.geteuid()}-")


def test_qemus_capabilities_are_kept_per_machine_and_handed_to_a_new_root(tmp_path, monkeypatch):
    """libvirt's probe of QEMU (seconds) is paid once per machine: its cached files go to the machine cache
    and come back into every fresh embedded root; only files named as libvirt names them, whole, newest."""
    import time

    from generator.hosts.local import CAPS_SUBDIR, _copy_capabilities

    monkeypatch.setenv("MEMBALLOON_MACHINE_CACHE", str(tmp_path / "machine"))
    kept = tmp_path / "machine" / "qemu-capabilities"
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    host = local_host(tmp_path, root)
    assert "asking QEMU what it can do" in host.first_contact()   # nothing kept yet: said before it is spent
    probed = root / CAPS_SUBDIR
    probed.mkdir(parents=True)
    good = "a" * 64 + ".xml"
    (probed / good).write_text("<qemuCaps/>")
    (probed / "notes.txt").write_text("not libvirt's")
    (probed / ("b" * 64 + ".xml")).write_bytes(b"x" * ((8 << 20) + 1))      # too large: left where it is
    _copy_capabilities(probed, kept)
    assert sorted(p.name for p in kept.iterdir()) == [good]
    assert oct(kept.stat().st_mode & 0o777) == "0o700"
    fresh = tmp_path / "fresh"
    fresh.mkdir(mode=0o700)
    assert local_host(tmp_path, fresh).first_contact() is None      # kept: nothing slow to announce
    _copy_capabilities(kept, fresh / CAPS_SUBDIR)
    assert (fresh / CAPS_SUBDIR / good).read_text() == "<qemuCaps/>"
    # an older file never replaces a newer one; a newer one does
    old = time.time() - 3600
    os.utime(kept / good, (old, old))
    (fresh / CAPS_SUBDIR / good).write_text("<qemuCaps newer='1'/>")
    _copy_capabilities(kept, fresh / CAPS_SUBDIR)
    assert "newer" in (fresh / CAPS_SUBDIR / good).read_text()
    (kept / good).write_text("<qemuCaps newest='1'/>")
    os.utime(kept / good, (time.time() + 60, time.time() + 60))
    _copy_capabilities(kept, fresh / CAPS_SUBDIR)
    assert "newest" in (fresh / CAPS_SUBDIR / good).read_text()
    assert not [p for p in (fresh / CAPS_SUBDIR).iterdir() if p.name.startswith(".")]   # no temporary left
    # a cache that cannot be written costs only the probe
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder should be")
    _copy_capabilities(kept, blocked / "capabilities")
    assert blocked.read_text() == "a file where the folder should be"


def test_capabilities_are_read_only_from_this_users_own_private_files(tmp_path):
    """libvirt runs as root and parses what it finds: nothing planted by someone else is handed to it."""
    from generator.hosts.local import _copy_capabilities

    secret = tmp_path / "secret"
    secret.write_text("root's secret")
    secret.chmod(0o600)
    src = tmp_path / "src"
    src.mkdir(mode=0o700)
    names = ["%064x.xml" % i for i in range(4)]
    (src / names[0]).symlink_to(secret)                     # a symlink to another file
    (src / names[1]).write_text("<theirs/>")
    os.chown(src / names[1], 65534, 65534)                  # someone else's file
    os.mkfifo(src / names[2])                               # a FIFO (would block a plain open)
    (src / names[3]).write_text("<mine/>")                  # the one good file, listed last
    dest = tmp_path / "dest"
    _copy_capabilities(src, dest)
    assert sorted(p.name for p in dest.iterdir()) == [names[3]]
    assert (dest / names[3]).read_text() == "<mine/>"
    # a folder others can write into, a folder of someone else's, a symlinked folder: nothing read from it
    for bad in ("shared", "nobody", "link"):
        folder = tmp_path / bad
        if bad == "link":
            folder.symlink_to(src, target_is_directory=True)
        else:
            folder.mkdir(mode=0o700)
            (folder / names[3]).write_text("<planted/>")
            if bad == "shared":
                folder.chmod(0o777)
            else:
                os.chown(folder, 65534, 65534)
        out = tmp_path / f"out-{bad}"
        _copy_capabilities(folder, out)
        assert not out.exists(), bad
