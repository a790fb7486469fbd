"""Hypervisor hosts: one interface for the machine itself and for hosts reached over SSH.

A host offers what Fabric's ``Connection`` offers (``run``, ``put``, ``get``) plus a libvirt
connection. The local host runs commands with Invoke's local runner and, by default, talks to
libvirt's embedded QEMU driver (``qemu:///embed?root=…``), which runs inside this process: no
daemon to install or start. A remote host is a Fabric ``Connection`` and a ``qemu+ssh://`` (or
``xen+ssh://``) URI. The sweep only ever sees this interface.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shlex
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from .domain import PREFIX
from .errors import HostError, UserError
from .manifest import Host as HostSpec

log = logging.getLogger(__name__)

_event_loop_lock = threading.Lock()
_event_loop_started = False
_MAX_ROOT_LEN = 48  # QEMU's monitor socket lives below the root; UNIX socket paths max out at 107 bytes


def libvirt_module():
    """Import libvirt-python lazily, with its own error printing silenced (we report errors ourselves)."""
    try:
        import libvirt  # type: ignore
    except ImportError:
        raise UserError("libvirt-python is not installed; run 'make install' (or pip install libvirt-python)") from None
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def _ensure_event_loop(libvirt) -> None:
    """The embedded driver and keepalives need an event loop running in this process."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def loop() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=loop, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


def embed_root(cache_dir: Path) -> Path:
    """The embedded driver's root: under the cache folder, or a short /tmp path if that is too long."""
    override = os.environ.get("MEMBALLOON_EMBED_ROOT")
    if override:
        return Path(override)
    root = (cache_dir / "embed").resolve()
    if len(str(root)) <= _MAX_ROOT_LEN:
        return root
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"memballoon-{digest}"


class HostRuntime:
    """A host the sweep can measure on; subclasses say how commands and files reach it."""

    def __init__(self, spec: HostSpec, cache_dir: Path):
        self.spec = spec
        self.name = spec.name
        self.cache_dir = cache_dir
        self._conn = None
        self._lock_file = None

    # -- the Fabric-shaped part --------------------------------------------------------------------
    def run(self, command: str, **kwargs: Any):
        raise NotImplementedError

    def put(self, local: str | Path, remote: str) -> None:
        raise NotImplementedError

    def get(self, remote: str, local: str | Path) -> None:
        raise NotImplementedError

    def read_text(self, path: str) -> str:
        result = self.run(f"cat {shlex.quote(path)} 2>/dev/null || true", hide=True, warn=True)
        return result.stdout

    def remove(self, path: str) -> None:
        self.run(f"rm -f {shlex.quote(path)}", hide=True, warn=True)

    # -- libvirt -----------------------------------------------------------------------------------
    @property
    def uri(self) -> str:
        return self.spec.uri

    def connect(self):
        """Open (once) the libvirt connection of this host."""
        if self._conn is not None:
            return self._conn
        libvirt = libvirt_module()
        _ensure_event_loop(libvirt)
        try:
            self._conn = libvirt.open(self.uri)
        except libvirt.libvirtError as e:
            raise HostError(f"host {self.name}: cannot open libvirt at {self.uri}: {e.get_error_message()}") from None
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - closing must never hide the real outcome
                pass
            self._conn = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def workdir(self) -> str:
        """Folder on the host where the probe's files and the consoles live."""
        return self.spec.workdir

    def stage(self, local: Path, name: str) -> str:
        """Make a local file available on the host; return its path there."""
        remote = f"{self.workdir()}/{name}"
        self.run(f"mkdir -p {shlex.quote(self.workdir())}/consoles && chmod 755 {shlex.quote(self.workdir())}",
                 hide=True)
        probe = self.run(f"test -s {shlex.quote(remote)} && echo present || true", hide=True, warn=True)
        if "present" not in probe.stdout:
            self.put(local, remote + ".part")
            self.run(f"chmod 644 {shlex.quote(remote)}.part && mv {shlex.quote(remote)}.part {shlex.quote(remote)}",
                     hide=True)
        return remote

    def console_path(self, domain: str) -> str:
        return f"{self.workdir()}/consoles/{domain}.log"

    def prepare_console(self, path: str) -> None:
        """An empty console file QEMU may write: under a system libvirtd it runs as another user."""
        q = shlex.quote(path)
        self.run(f"rm -f {q} && : > {q} && chmod 666 {q}", hide=True)

    def clean_leftovers(self) -> list[str]:
        """Destroy domains a killed run left behind (they carry the tool's name prefix)."""
        libvirt = libvirt_module()
        conn = self.connect()
        gone = []
        for dom in conn.listAllDomains():
            if dom.name().startswith(PREFIX):
                try:
                    if dom.isActive():
                        dom.destroy()
                    if dom.isPersistent():
                        dom.undefine()
                    gone.append(dom.name())
                except libvirt.libvirtError as e:
                    if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:  # libvirt's reconnect already ended it
                        gone.append(dom.name())
                        continue
                    log.warning("host %s: could not remove leftover domain %s: %s", self.name, dom.name(),
                                e.get_error_message())
        return gone

    def facts(self) -> dict:
        """What the records say about the host: cores, memory, kernel, versions."""
        conn = self.connect()
        model, memory_mib, cpus = conn.getInfo()[:3]
        kernel = self.run("uname -r", hide=True).stdout.strip()
        meminfo = self.read_text("/proc/meminfo")
        available = re.search(r"^MemAvailable:\s+(\d+)", meminfo, re.M)
        total = re.search(r"^MemTotal:\s+(\d+)", meminfo, re.M)
        if total:  # libvirt's node info can be off (the embedded driver reports a cgroup's view)
            memory_mib = int(total.group(1)) // 1024
        hv_type = conn.getType()
        hv_version = _version(conn.getVersion())
        return {
            "name": self.name,
            "uri": self.uri if not self.spec.is_embedded else "qemu:///embed",
            "hostname": conn.getHostname(),
            "arch": model,
            "cores": cpus,
            "memory_mib": memory_mib,
            "memory_available_mib": int(available.group(1)) // 1024 if available else memory_mib,
            "kernel": kernel,
            "hypervisor": f"{hv_type} {hv_version}",
            "qemu_version": hv_version if hv_type == "QEMU" else None,
            "libvirt_version": _version(conn.getLibVersion()),
        }


def _version(number: int) -> str:
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


class LocalHost(HostRuntime):
    """This machine, through Invoke's local runner; libvirt embedded unless a URI says otherwise."""

    def __init__(self, spec: HostSpec, cache_dir: Path):
        super().__init__(spec, cache_dir)
        from invoke import Context  # fabric depends on invoke; its local runner is Connection.local's

        self._ctx = Context()
        self.root = embed_root(cache_dir) if spec.is_embedded else None

    def run(self, command: str, **kwargs: Any):
        kwargs.setdefault("in_stream", False)
        return self._ctx.run(command, **kwargs)

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
            p.parent.mkdir(parents=True, exist_ok=True)
            p.touch(mode=0o666)
            p.chmod(0o666)

    @property
    def uri(self) -> str:
        return f"qemu:///embed?root={self.root}" if self.root else self.spec.uri

    def workdir(self) -> str:
        if self.root:
            return str(self.root / "work")
        return self.spec.workdir

    def stage(self, local: Path, name: str) -> str:
        if self.root:  # same process, same machine: use the cached file where it is
            return str(local)
        return super().stage(local, name)

    def connect(self):
        if self._conn is None and self.root:
            self._prepare_embed_root()
        return super().connect()

    def clean_leftovers(self) -> list[str]:
        gone = super().clean_leftovers()
        if self.root:  # belt and braces: a QEMU whose domain libvirt no longer knows
            for pidfile in (self.root / "run" / "qemu").glob(f"{PREFIX}*.pid"):
                try:
                    pid = int(pidfile.read_text().strip())
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except (OSError, ValueError):
                    continue
                if b"qemu" in cmdline and pidfile.stem.encode() in cmdline:
                    os.kill(pid, 9)
                    if pidfile.stem not in gone:
                        gone.append(pidfile.stem)
        return gone

    def _prepare_embed_root(self) -> None:
        root = self.root
        (root / "etc").mkdir(parents=True, exist_ok=True)
        (root / "work" / "consoles").mkdir(parents=True, exist_ok=True)
        lock = open(root / "sweep.lock", "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            lock.close()
            raise HostError(f"host {self.name}: another sweep (pid {holder}) is using the embedded hypervisor at "
                            f"{root}; wait for it to finish or set MEMBALLOON_EMBED_ROOT to another folder") from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock_file = lock
        # qemu.conf of the embedded driver: QEMU's stdio to a file (no virtlogd), and as root run
        # QEMU as root so it can read the probe from the cache without ownership games.
        # No ownership changes or xattr bookkeeping on the shared probe files: two guests boot the
        # same kernel at once, and the files are ours anyway.
        conf = ['stdio_handler = "file"', "dynamic_ownership = 0", "remember_owner = 0"]
        if os.geteuid() == 0:
            conf += ['user = "+0"', 'group = "+0"']
        (root / "etc" / "qemu.conf").write_text("\n".join(conf) + "\n")
        os.environ.setdefault("LIBVIRT_LOG_OUTPUTS", f"3:file:{root}/libvirt.log")


class SSHHost(HostRuntime):
    """A remote hypervisor: commands and files over Fabric, libvirt over qemu+ssh:// or xen+ssh://."""

    def __init__(self, spec: HostSpec, cache_dir: Path, connection=None):
        super().__init__(spec, cache_dir)
        if connection is None:
            from fabric import Connection

            connect_kwargs = {"key_filename": spec.ssh.key} if spec.ssh.key else {}
            connection = Connection(spec.ssh_address, user=spec.ssh.user, port=spec.ssh.port,
                                    connect_kwargs=connect_kwargs, connect_timeout=20)
        self.connection = connection
        self._ssh_lock = threading.Lock()  # one SSH transport shared by the sweep's slots

    def run(self, command: str, **kwargs: Any):
        from invoke.exceptions import UnexpectedExit

        kwargs.setdefault("in_stream", False)
        try:
            with self._ssh_lock:
                return self.connection.run(command, **kwargs)
        except UnexpectedExit:
            raise
        except Exception as e:  # paramiko/socket errors: say which host
            raise HostError(f"host {self.name}: SSH to {self.spec.ssh.user}@{self.spec.ssh_address}:"
                            f"{self.spec.ssh.port} failed: {e}") from None

    def put(self, local: str | Path, remote: str) -> None:
        with self._ssh_lock:
            self.connection.put(str(local), remote)

    def get(self, remote: str, local: str | Path) -> None:
        with self._ssh_lock:
            self.connection.get(remote, str(local))

    def close(self) -> None:
        super().close()
        self.connection.close()


def runtime_for(spec: HostSpec, cache_dir: Path) -> HostRuntime:
    return SSHHost(spec, cache_dir) if spec.is_remote else LocalHost(spec, cache_dir)
