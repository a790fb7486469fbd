"""This machine: Invoke's local runner, and libvirt's embedded QEMU driver (``qemu:///embed?root=…``)
in this process unless a URI names a local libvirtd: no daemon to install or start."""
from __future__ import annotations

import logging
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any

from ..domain import PREFIX
from ..errors import HostError, UserError
from ..manifest import Host as HostSpec
from ..safe import lock_or_refuse, private_dir, write_beneath, write_nofollow

from .base import HostRuntime, _unexpected_exit, embed_root, machine_cache_dir, qemu_processes

log = logging.getLogger(__name__)

# libvirt's QEMU capabilities cache: probing QEMU (about 8 s here, one binary at a time) is what a fresh
# embedded root spends before its first answer. The files are kept per machine and handed to every new
# root; libvirt checks each against its QEMU binary, libvirt version and host before trusting it, and
# probes again where one is stale.
CAPS_SUBDIR = Path("cache") / "qemu" / "capabilities"
CAPS_NAME = re.compile(r"[0-9a-f]{64}\.xml")
CAPS_MAX_BYTES = 8 << 20


class LocalHost(HostRuntime):
    """This machine, through Invoke's local runner; libvirt embedded unless a URI says otherwise."""

    def __init__(self, spec: HostSpec, cache_dir: Path):
        super().__init__(spec, cache_dir)
        from invoke import Context  # fabric depends on invoke; its local runner is Connection.local's

        self._ctx = Context()
        self.root = embed_root(cache_dir) if spec.is_embedded else None

    def run(self, command: str, **kwargs: Any):
        from invoke.exceptions import UnexpectedExit

        kwargs.setdefault("in_stream", False)
        try:
            return self._ctx.run(command, **kwargs)
        except UnexpectedExit as e:
            raise HostError(_unexpected_exit(self.name, e)) from None

    def put(self, local: str | Path, remote: str) -> None:
        shutil.copyfile(local, remote)

    def get(self, remote: str, local: str | Path) -> None:
        shutil.copyfile(remote, local)

    def read_text(self, path: str) -> str:
        try:
            return Path(path).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def remove(self, path: str) -> None:
        Path(path).unlink(missing_ok=True)

    def prepare_console(self, path: str) -> None:
        p = Path(path)
        p.unlink(missing_ok=True)
        if not self.root:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            os.close(fd)

    @property
    def uri(self) -> str:
        return f"qemu:///embed?root={self.root}" if self.root else self.spec.uri

    def workdir(self) -> str:
        if self.root:
            return str(self.root / "work")
        return super().workdir()

    def stage(self, local: Path, name: str) -> str:
        if self.root:  # same process, same machine: use the cached file where it is
            return str(local)
        return super().stage(local, name)

    def first_contact(self) -> str | None:
        if not self.root or self._conn is not None:
            return None
        kept = machine_cache_dir() / "qemu-capabilities"
        try:
            if (self.root / CAPS_SUBDIR).is_dir() or (_own_private_folder(kept) and any(
                    CAPS_NAME.fullmatch(p.name) for p in kept.iterdir())):
                return None
        except OSError:  # an unreadable cache: the probe is paid, and said
            pass
        return f"asking QEMU what it can do, once for this machine (some seconds; kept in {kept})"

    def connect(self):
        if self._conn is not None or not self.root:
            return super().connect()
        self._prepare_embed_root()
        kept = machine_cache_dir() / "qemu-capabilities"
        _copy_capabilities(kept, self.root / CAPS_SUBDIR)
        conn = super().connect()
        try:
            conn.getCapabilities()  # probes QEMU now where nothing kept was still good, then keep what it wrote
        except Exception:  # noqa: BLE001 - the facts query says what is wrong, in its words
            return conn
        _copy_capabilities(self.root / CAPS_SUBDIR, kept)
        return conn

    def clean_leftovers(self) -> list[str]:
        gone = super().clean_leftovers()
        if self.root:
            # belt and braces: a QEMU of this root that libvirt no longer knows (a run killed while the
            # guest was starting leaves one that libvirt's reconnect drops). Its command line names the
            # root and the tool's domain prefix.
            root = str(self.root).encode()
            for pid, argv in qemu_processes():
                if not any(root in a for a in argv):
                    continue
                name = next((a.split(b"guest=", 1)[1].split(b",", 1)[0] for a in argv if a.startswith(b"guest=")), b"")
                if not name.startswith(PREFIX.encode()):
                    continue
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    continue
                if name.decode(errors="replace") not in gone:
                    gone.append(name.decode(errors="replace"))
        return gone

    def _prepare_embed_root(self) -> None:
        root = private_dir(self.root)
        for sub in ("etc", "work", "work/consoles"):
            private_dir(root / sub)
        self._lock_file = lock_or_refuse(
            root / "sweep.lock", f"host {self.name}: another sweep (pid {{holder}}) is using the embedded hypervisor "
                                 f"at {root}; wait for it to finish or set MEMBALLOON_EMBED_ROOT to another folder")
        # qemu.conf of the embedded driver: QEMU's stdio to a file (no virtlogd), and as root run
        # QEMU as root so it can read the probe from the cache without ownership games.
        # No ownership changes or xattr bookkeeping on the shared probe files: two guests boot the
        # same kernel at once, and the files are ours anyway.
        conf = ['stdio_handler = "file"', "dynamic_ownership = 0", "remember_owner = 0"]
        if os.geteuid() == 0:
            conf += ['user = "+0"', 'group = "+0"']
        write_nofollow(root / "etc" / "qemu.conf", ("\n".join(conf) + "\n").encode())
        os.environ.setdefault("LIBVIRT_LOG_OUTPUTS", f"3:file:{root}/libvirt.log")


def _own_private_folder(path: Path) -> bool:
    """A real folder (not a symlink) of this user that nobody else can write into."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _read_own_file(path: Path) -> bytes:
    """A regular file of this user's, not through a symlink, at most CAPS_MAX_BYTES."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_size > CAPS_MAX_BYTES:
            raise OSError(f"{path}: not a regular file of this user's of at most {CAPS_MAX_BYTES} bytes")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(CAPS_MAX_BYTES + 1)[:CAPS_MAX_BYTES]
    finally:
        os.close(fd)


def _copy_capabilities(src: Path, dest: Path) -> None:
    """Copy libvirt's cached QEMU capabilities (files named by their hash) that `dest` lacks or holds
    older. Read only from a private folder of this user's, never through a symlink, and only this
    user's regular files; each written whole (safe.write_beneath: an unpredictable temporary name, then a
    rename) into a private folder. A file or a cache that cannot be read or written costs only the probe,
    never the sweep."""
    try:
        if not _own_private_folder(src):
            return
        names = sorted(p for p in src.iterdir() if CAPS_NAME.fullmatch(p.name))[:16]
        if not names:
            return
        private_dir(dest)
    except (OSError, UserError) as e:
        log.debug("QEMU capabilities not copied from %s to %s: %s", src, dest, e)
        return
    for p in names:
        try:
            st = p.lstat()
            target = dest / p.name
            if target.exists() and target.lstat().st_mtime >= st.st_mtime:
                continue
            write_beneath(dest, p.name, _read_own_file(p), mode=0o600)
            os.utime(target, (st.st_mtime, st.st_mtime), follow_symlinks=False)
        except (OSError, UserError) as e:
            log.debug("QEMU capabilities %s not copied to %s: %s", p, dest, e)
