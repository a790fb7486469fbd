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
import urllib.parse
from pathlib import Path
from typing import Any

from .domain import PREFIX
from .errors import HostError, UserError
from .manifest import Host as HostSpec
from .safe import open_nofollow, private_dir, write_nofollow

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
    """The embedded driver's root: under the cache folder, or a short private folder if that is too long.

    The short folder is in $XDG_RUNTIME_DIR when there is one, else in /tmp under a name with this
    user's id; either way it is made (or accepted) only as a private folder of this user, so a
    folder or symlink someone else planted at the name is refused (see safe.private_dir)."""
    override = os.environ.get("MEMBALLOON_EMBED_ROOT")
    if override:
        return Path(override)
    root = (cache_dir / "embed").resolve()
    if len(str(root)) <= _MAX_ROOT_LEN:
        return root
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:10]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and len(runtime) < _MAX_ROOT_LEN - 24 and os.path.isdir(runtime):
        return Path(runtime) / f"memballoon-{digest}"
    return Path(tempfile.gettempdir()) / f"memballoon-{os.geteuid()}-{digest}"


class HostRuntime:
    """A host the sweep can measure on; subclasses say how commands and files reach it."""

    def __init__(self, spec: HostSpec, cache_dir: Path):
        self.spec = spec
        self.name = spec.name
        self.cache_dir = cache_dir
        self._conn = None
        self._lock_file = None
        self._workdir: str | None = None  # resolved and checked on the host on first use

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

    # The folder on the host for the probe's files and the consoles. It is created private to the
    # login user (others may only traverse it: QEMU under a system libvirtd runs as another user),
    # and refused if it is a symlink, someone else's, or writable by others.
    _WORKDIR_SCRIPT = r"""
set -e
d=$1
if [ -z "$d" ]; then
  if [ "$(id -u)" = 0 ]; then d=/var/lib/memballoon; else d="${XDG_CACHE_HOME:-$HOME/.cache}/memballoon"; fi
fi
umask 077
[ -L "$d" ] && { echo "symlink $d"; exit 0; }
mkdir -p "$(dirname "$d")"
mkdir -m 0711 "$d" 2>/dev/null || true
[ -L "$d/consoles" ] && { echo "symlink $d/consoles"; exit 0; }
mkdir -m 0711 "$d/consoles" 2>/dev/null || true
for x in "$d" "$d/consoles"; do
  [ -L "$x" ] && { echo "symlink $x"; exit 0; }
  echo "dir $x $(stat -c '%u %a %F' "$x")"
done
echo "uid $(id -u)"
"""

    def workdir(self) -> str:
        """Folder on the host where the probe's files and the consoles live (made private on first use)."""
        if self._workdir:
            return self._workdir
        out = self.run(f"sh -c {shlex.quote(self._WORKDIR_SCRIPT)} workdir {shlex.quote(self.spec.workdir)}",
                       hide=True, warn=True)
        lines = out.stdout.splitlines()
        uid = next((ln.split()[1] for ln in lines if ln.startswith("uid ")), None)
        dirs = [ln.split(" ", 2)[1:] for ln in lines if ln.startswith("dir ")]
        bad = next((ln for ln in lines if ln.startswith("symlink ")), None)
        if bad:
            raise HostError(f"host {self.name}: workdir {bad.split(' ', 1)[1]} is a symlink; remove it "
                            "(someone may have planted it) or set hosts[].workdir")
        if uid is None or len(dirs) != 2:
            raise HostError(f"host {self.name}: cannot prepare the workdir {self.spec.workdir or '(default)'}: "
                            f"{_last_line(out.stderr) or 'no answer'}")
        for path, facts in dirs:
            owner, mode, kind = (facts.split(" ", 2) + ["", "", ""])[:3]
            if kind != "directory" or owner != uid or int(mode, 8) & 0o022:
                raise HostError(f"host {self.name}: workdir {path} is not a private folder of uid {uid} (owner "
                                f"{owner}, mode {mode}, {kind}); remove it or set hosts[].workdir")
        self._workdir = dirs[0][0]
        return self._workdir

    def stage(self, local: Path, name: str) -> str:
        """Make a local file available on the host, verified by its sha256; return its path there.

        A file already at the name is used only if its sha256 matches; an upload goes to a file
        created exclusively (mktemp) in the private workdir, is verified, then renamed."""
        workdir = self.workdir()
        remote = f"{workdir}/{name}"
        digest = _sha256_file(local)
        q = shlex.quote(remote)
        have = self.run(f"sha256sum -- {q} 2>/dev/null || true", hide=True, warn=True).stdout.split()
        if not have or have[0] != digest:
            tmp = self.run(f"mktemp {shlex.quote(workdir)}/.upload.XXXXXXXX", hide=True).stdout.strip()
            self.put(local, tmp)
            got = self.run(f"sha256sum -- {shlex.quote(tmp)}", hide=True).stdout.split()
            if not got or got[0] != digest:
                self.remove(tmp)
                raise HostError(f"host {self.name}: {remote} arrived with sha256 {got[0] if got else '?'}, "
                                f"expected {digest}; the transfer was corrupted")
            self.run(f"chmod 644 {shlex.quote(tmp)} && mv -f {shlex.quote(tmp)} {q}", hide=True)
        return remote

    # Xen's console daemon writes each guest's console here when started with
    # XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console" (in /etc/default/xen).
    XEN_CONSOLE_DIR = "/var/log/xen/console"

    def console_path(self, domain: str) -> str:
        if self.spec.is_xen:
            return f"{self.XEN_CONSOLE_DIR}/guest-{domain}.log"
        return f"{self.workdir()}/consoles/{domain}.log"

    def prepare_console(self, path: str) -> None:
        """An empty console file only its owner can read or write.

        libvirt opens file-backed serial consoles itself and hands QEMU the descriptor, so nobody
        else needs access; a guest's console is evidence and must not be forgeable. On Xen,
        xenconsoled creates the log itself: only an old one of the same name is removed."""
        q = shlex.quote(path)
        if self.spec.is_xen:
            self.run(f"rm -f {q}", hide=True)
            return
        self.run(f"rm -f {q} && (umask 077 && set -C && : > {q})", hide=True)

    def create_overlay(self, domain: str, image: str, fmt: str) -> str:
        """A throwaway qcow2 overlay for a full-system point, backed by `image` (which QEMU then opens
        read-only: the image is never written). Named after the domain, so a killed run's overlays are
        recognised and removed at the next start (clean_leftovers)."""
        folder = f"{self.workdir()}/overlays"
        path = f"{folder}/{domain}.qcow2"
        self.run(f"mkdir -p -m 0700 {shlex.quote(folder)} && rm -f {shlex.quote(path)} && "
                 f"qemu-img create -q -f qcow2 -F {shlex.quote(fmt)} -b {shlex.quote(image)} {shlex.quote(path)}",
                 hide=True)
        return path

    def remove_leftover_overlays(self) -> list[str]:
        folder = f"{self.workdir()}/overlays"
        out = self.run(f"cd {shlex.quote(folder)} 2>/dev/null && for f in {PREFIX}*.qcow2; do "
                       "[ -f \"$f\" ] && rm -f -- \"$f\" && echo \"$f\"; done; true", hide=True, warn=True).stdout
        return [line for line in out.splitlines() if line.endswith(".qcow2")]

    def creation_failure(self, domain: str) -> str:
        """Why Xen could not build a domain, from libxl's log (libvirt's own message only says that it
        failed): its last error lines about the domain, shortened."""
        out = self.run("tail -n 300 /var/log/libvirt/libxl/libxl-driver.log 2>/dev/null || true",
                       hide=True, warn=True).stdout
        lines = [ln for ln in out.splitlines() if ("error" in ln.lower() or "fail" in ln.lower())]
        picked = [re.sub(r"^[0-9: .+-]+", "", ln).strip() for ln in lines[-3:]]  # without the time stamp
        return "; ".join(p for p in picked if p)[:300]

    def check_console_logging(self) -> None:
        """On Xen the probe is read from xenconsoled's logs: say how to turn them on if they are off."""
        if not self.spec.is_xen:
            return
        out = self.run("ps -eo args 2>/dev/null | grep '^[^ ]*xenconsoled' || true", hide=True, warn=True).stdout
        if "--log=guest" not in out and "--log=all" not in out and "-l guest" not in out:
            raise HostError(f"host {self.name}: xenconsoled does not log guest consoles, and the probe is read "
                            "from them; set XENCONSOLED_ARGS=\"--log=guest --log-dir=/var/log/xen/console\" in "
                            "/etc/default/xen and restart xenconsoled")

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
        swap = re.search(r"^SwapTotal:\s+(\d+)", meminfo, re.M)
        total = re.search(r"^MemTotal:\s+(\d+)", meminfo, re.M)
        if total:  # libvirt's node info can be off (the embedded driver reports a cgroup's view)
            memory_mib = int(total.group(1)) // 1024
        hv_type = conn.getType()
        hv_version = _version(conn.getVersion())
        xen = self._xen_facts() if hv_type == "Xen" else None
        if xen and xen.get("free_mib") is not None:
            memory_available = xen["free_mib"]  # guests take Xen's free memory, not dom0's
        else:
            memory_available = int(available.group(1)) // 1024 if available else memory_mib
        facts = {
            "name": self.name,
            "uri": self.spec.uri if not self.spec.is_embedded else "qemu:///embed",
            "hostname": conn.getHostname(),
            "arch": model,
            "cores": cpus,
            "memory_mib": memory_mib,
            "memory_available_mib": memory_available,
            "swap_mib": int(swap.group(1)) // 1024 if swap else 0,
            "kernel": kernel,
            "hypervisor": f"{hv_type} {hv_version}",
            "qemu_version": hv_version if hv_type == "QEMU" else None,
            "libvirt_version": _version(conn.getLibVersion()),
        }
        if xen:  # the machine is Xen's: its CPUs and memory, not dom0's share of them
            facts["xen"] = xen
            facts["cores"] = xen.get("cpus") or cpus
            facts["memory_mib"] = xen.get("total_mib") or memory_mib
        return facts

    def _xen_facts(self) -> dict:
        """What `xl info` says: Xen's version, its memory (total, free), its command line, dom0's kernel."""
        return parse_xl_info(self.run("xl info 2>/dev/null || true", hide=True, warn=True).stdout)


XL_INFO_LIMIT = 256 * 1024   # `xl info` prints a few KiB; more is not Xen talking
XL_TEXT_LIMIT = 200          # characters kept of a text field (the command line is the longest)


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


def qemu_processes() -> list[tuple[int, list[bytes]]]:
    """(pid, argv) of every QEMU process on this machine: how leftovers of killed runs are found."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and b"qemu-system" in argv[0]:
            found.append((int(proc.name), argv))
    return found


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


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

    def connect(self):
        if self._conn is None and self.root:
            self._prepare_embed_root()
        return super().connect()

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
        lock = open_nofollow(root / "sweep.lock")
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
        write_nofollow(root / "etc" / "qemu.conf", ("\n".join(conf) + "\n").encode())
        os.environ.setdefault("LIBVIRT_LOG_OUTPUTS", f"3:file:{root}/libvirt.log")


class HostKeyPolicy:
    """What to do with a host key that no known_hosts file lists: refuse (the default), or with
    ssh.accept_new_host_key record it and go on, like OpenSSH's StrictHostKeyChecking=accept-new."""

    def __init__(self, host_name: str, known_hosts: Path, accept_new: bool):
        self.host_name = host_name
        self.known_hosts = known_hosts
        self.accept_new = accept_new

    def missing_host_key(self, client, hostname: str, key) -> None:
        line = f"{hostname} {key.get_name()} {key.get_base64()}"
        if not self.accept_new:
            host, _, port = hostname.strip("[").partition("]:")
            scan = f"ssh-keyscan {'-p ' + port + ' ' if port else ''}-t {key.get_name()} {host} >> {self.known_hosts}"
            raise HostError(f"host {self.host_name}: unknown SSH host key for {hostname} ({key.get_name()} "
                            f"SHA256:{_fingerprint(key)}); if that is the host's key, add it with: {scan} "
                            "(check the fingerprint first), or set ssh.accept_new_host_key: true")
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with open(self.known_hosts, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        client.get_host_keys().add(hostname, key.get_name(), key)
        log.warning("host %s: accepted the new SSH host key %s SHA256:%s and recorded it in %s", self.host_name,
                    key.get_name(), _fingerprint(key), self.known_hosts)


def _fingerprint(key) -> str:
    import base64

    return base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


class SSHHost(HostRuntime):
    """A remote hypervisor: commands and files over Fabric, libvirt over qemu+ssh:// or xen+ssh://.

    Host keys are checked as OpenSSH checks them: against ~/.ssh/known_hosts, /etc/ssh/ssh_known_hosts
    and the manifest's ssh.known_hosts. libvirt's own SSH connection is then pinned to the key that
    Fabric verified (see `uri`), so both paths trust exactly the same key."""

    def __init__(self, spec: HostSpec, cache_dir: Path, connection=None):
        super().__init__(spec, cache_dir)
        self._policy = None
        if connection is None:
            from fabric import Connection

            connect_kwargs = {"key_filename": spec.ssh.key} if spec.ssh.key else {}
            connection = Connection(spec.ssh_address, user=spec.ssh.user, port=spec.ssh.port,
                                    connect_kwargs=connect_kwargs, connect_timeout=20)
            client = connection.client
            for system in ("/etc/ssh/ssh_known_hosts", os.path.expanduser("~/.ssh/known_hosts")):
                if os.path.isfile(system):
                    client.load_system_host_keys(system)
            extra = Path(spec.ssh.known_hosts) if spec.ssh.known_hosts else Path(
                os.path.expanduser("~/.ssh/known_hosts"))
            if spec.ssh.known_hosts and extra.is_file():
                client.load_host_keys(str(extra))
            self._policy = HostKeyPolicy(spec.name, extra, spec.ssh.accept_new_host_key)
            client.set_missing_host_key_policy(self._policy)
        self.connection = connection
        self._ssh_lock = threading.Lock()  # one SSH transport shared by the sweep's slots

    def run(self, command: str, **kwargs: Any):
        from invoke.exceptions import UnexpectedExit

        kwargs.setdefault("in_stream", False)
        try:
            with self._ssh_lock:
                return self.connection.run(command, **kwargs)
        except UnexpectedExit as e:
            raise HostError(_unexpected_exit(self.name, e)) from None
        except UserError:
            raise
        except Exception as e:  # paramiko/socket errors: say which host
            raise HostError(f"host {self.name}: SSH to {self.spec.ssh.user}@{self.spec.ssh_address}:"
                            f"{self.spec.ssh.port} failed: {_ssh_reason(e)}") from None

    def put(self, local: str | Path, remote: str) -> None:
        with self._ssh_lock:
            self.connection.put(str(local), remote)

    def get(self, remote: str, local: str | Path) -> None:
        with self._ssh_lock:
            self.connection.get(remote, str(local))

    def connect(self):
        if self._conn is None:
            self.run("true", hide=True)  # verifies the host key before libvirt's transport is used
        return super().connect()

    @property
    def uri(self) -> str:
        """The manifest's URI, with libvirt's SSH transport pinned to the host key Fabric verified."""
        uri = self.spec.uri
        scheme = urllib.parse.urlsplit(uri).scheme
        transport = scheme.partition("+")[2]
        if transport not in ("ssh", "libssh", "libssh2") or self._policy is None:
            return uri
        pinned = self._pinned_known_hosts()
        if transport == "ssh":
            extra = {"command": str(self._ssh_wrapper(pinned))}
            if self.spec.ssh.key:
                extra["keyfile"] = self.spec.ssh.key
        else:
            extra = {"known_hosts": str(pinned), "known_hosts_verify": "normal"}
        parts = urllib.parse.urlsplit(uri)
        query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if k not in extra]
        query += list(extra.items())
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, safe="/")))

    def _pinned_known_hosts(self) -> Path:
        """A private known_hosts with the one key this host presented to Fabric (already verified)."""
        transport = self.connection.client.get_transport() if self.connection.client else None
        if transport is None or not transport.is_active():
            self.run("true", hide=True)
            transport = self.connection.client.get_transport()
        key = transport.get_remote_server_key()
        name = self.spec.ssh_address if self.spec.ssh.port == 22 else f"[{self.spec.ssh_address}]:{self.spec.ssh.port}"
        folder = private_dir(self.cache_dir / "ssh")
        path = folder / f"{self.name}.known_hosts"
        write_nofollow(path, f"{name} {key.get_name()} {key.get_base64()}\n".encode())
        return path

    def _ssh_wrapper(self, pinned: Path) -> Path:
        """libvirt's ssh transport runs OpenSSH as `command`; this one checks only the pinned key."""
        path = private_dir(self.cache_dir / "ssh") / f"{self.name}-ssh"
        script = ("#!/bin/sh\n# written by memballoon: OpenSSH for libvirt, trusting only the host key that was verified\n"
                  f"exec ssh -o UserKnownHostsFile={shlex.quote(str(pinned))} -o GlobalKnownHostsFile=/dev/null "
                  "-o StrictHostKeyChecking=yes -o UpdateHostKeys=no -o BatchMode=yes \"$@\"\n")
        write_nofollow(path, script.encode(), mode=0o700)
        os.chmod(path, 0o700)
        return path

    def close(self) -> None:
        super().close()
        self.connection.close()


def _ssh_reason(e: Exception) -> str:
    import paramiko

    if isinstance(e, paramiko.BadHostKeyException):
        return (f"the host key has CHANGED: {e.hostname} offered {e.key.get_name()} SHA256:{_fingerprint(e.key)}, "
                f"known_hosts has SHA256:{_fingerprint(e.expected_key)}; refusing to connect. If the change is "
                f"expected, remove the old key: ssh-keygen -R '{e.hostname}'")
    return " ".join(str(e).split())[:300] or type(e).__name__


def _unexpected_exit(host: str, e) -> str:
    """invoke's UnexpectedExit as one line: host, command, exit code, last line of stderr."""
    result = e.result
    command = " ".join(str(result.command).split())
    if len(command) > 80:
        command = command[:77] + "..."
    tail = _last_line(result.stderr) or _last_line(result.stdout)
    return f"host {host}: '{command}' exited {result.exited}" + (f": {tail}" if tail else "")


def runtime_for(spec: HostSpec, cache_dir: Path, note=None, stop=None) -> HostRuntime:
    """The runtime of a manifest's host; `note` hears progress of long steps (building, booting),
    `stop` (an Event) interrupts them."""
    if spec.is_nested:
        from .nested_xen import NestedXenHost  # it builds on SSHHost: imported here, not at the top

        return NestedXenHost(spec, cache_dir, note, stop)
    return SSHHost(spec, cache_dir) if spec.is_remote else LocalHost(spec, cache_dir)
