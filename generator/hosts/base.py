"""The host interface: what the sweep can do with a hypervisor host, whatever reaches it.

A host offers what Fabric's ``Connection`` offers (``run``, ``put``, ``get``) plus a libvirt
connection, a private workdir, staged files, consoles and overlays. How commands and files reach
it is a subclass's business (local.py, ssh.py, nested_xen.py); what differs between hypervisors is
asked of the host's `hypervisor` (generator/hypervisors/).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shlex
import tempfile
import threading
from pathlib import Path
from typing import Any, TypedDict

from .. import hypervisors
from ..domain import PREFIX
from ..errors import HostError, UserError, daemon_hint, libvirt_message
from ..manifest import Host as HostSpec

log = logging.getLogger(__name__)


class HostFacts(TypedDict, total=False):
    """What the records say about a host (HostRuntime.facts): typed once, here."""

    name: str
    uri: str
    hostname: str
    arch: str
    cores: int
    memory_mib: int
    memory_available_mib: int   # what guests can take (Xen's free memory on Xen)
    swap_mib: int
    kernel: str
    hypervisor: str             # libvirt's name and version, e.g. 'QEMU 7.2.0'
    qemu_version: str | None
    libvirt_version: str
    xen: dict                   # Xen's `xl info` (hypervisors/xen.py)
    nested: dict                # the outer machine of a nested host (hosts/nested_xen.py)

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


def machine_cache_dir() -> Path:
    """Where answers about this machine are kept for every clone of the project (whether KVM works,
    what its QEMU can do): MEMBALLOON_MACHINE_CACHE, else $XDG_CACHE_HOME/memballoon, else
    ~/.cache/memballoon."""
    explicit = os.environ.get("MEMBALLOON_MACHINE_CACHE")
    if explicit:
        return Path(explicit).resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).resolve() / "memballoon"


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
        self.hypervisor = hypervisors.for_host(spec.uri, spec.kind, spec.domain_type)

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

    def first_contact(self) -> str | None:
        """What the first connection will spend time on, said before it does (None: nothing worth saying)."""
        return None

    def connect(self):
        """Open (once) the libvirt connection of this host."""
        if self._conn is not None:
            return self._conn
        libvirt = libvirt_module()
        _ensure_event_loop(libvirt)
        try:
            self._conn = libvirt.open(self.uri)
        except libvirt.libvirtError as e:
            message = libvirt_message(e)
            raise HostError(f"host {self.name}: cannot open libvirt at {self.uri}: {message}"
                            f"{daemon_hint(self.uri, message, measuring=True)}") from None
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

    def console_path(self, domain: str) -> str:
        """Where a guest's console is written on the host (the hypervisor says)."""
        return self.hypervisor.console_path(self, domain)

    def prepare_console(self, path: str) -> None:
        self.hypervisor.prepare_console(self, path)

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
        """More about why the host refused a domain than libvirt says ('' if the hypervisor knows nothing)."""
        return self.hypervisor.creation_failure(self, domain)

    def check_console_logging(self) -> None:
        """Whether guests' consoles can be read on this host (a HostError saying how to fix it if not)."""
        self.hypervisor.check_host(self)

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
                                libvirt_message(e))
        return gone

    def facts(self) -> HostFacts:
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
        facts = {
            "name": self.name,
            "uri": self.spec.uri if not self.spec.is_embedded else "qemu:///embed",
            "hostname": conn.getHostname(),
            "arch": model,
            "cores": cpus,
            "memory_mib": memory_mib,
            "memory_available_mib": int(available.group(1)) // 1024 if available else memory_mib,
            "swap_mib": int(swap.group(1)) // 1024 if swap else 0,
            "kernel": kernel,
            "hypervisor": f"{hv_type} {hv_version}",
            "qemu_version": hv_version if hv_type == "QEMU" else None,
            "libvirt_version": _version(conn.getLibVersion()),
        }
        return self.hypervisor.facts(self, hv_type, facts)


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


def _unexpected_exit(host: str, e) -> str:
    """invoke's UnexpectedExit as one line: host, command, exit code, last line of stderr."""
    result = e.result
    command = " ".join(str(result.command).split())
    if len(command) > 80:
        command = command[:77] + "..."
    tail = _last_line(result.stderr) or _last_line(result.stdout)
    return f"host {host}: '{command}' exited {result.exited}" + (f": {tail}" if tail else "")
