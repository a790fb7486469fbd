"""Hosts the tool starts itself: a hypervisor inside QEMU (TCG) on this machine, reached over SSH.

What differs between a nested Xen host (nested_xen.py) and a nested KVM host (nested_kvm.py) is a
`Flavor`: the disk image's recipe, how QEMU boots it and with which CPU model, the libvirt URI
scheme and what the records say about it. Everything else is here, once: the disk image is built
from Debian's packages (guests/images.py) with a key pair and a host key made when the image is
built; QEMU boots it with the disk as a snapshot (the cached image is never written) and user
networking that forwards one loopback port to the nested host's sshd; its init starts the
hypervisor's daemons, libvirtd and sshd and says so on the serial console.

From then on the nested host is an ordinary remote host: Fabric over SSH for commands and files,
libvirt through ``<scheme>://root@127.0.0.1:<port>/system``, with the host key the image was built
with written to a known_hosts file first. Nothing in the measuring path knows it is nested.

QEMU runs with the sweep: it is stopped when the host is closed (end of the sweep, Ctrl-C), dies
with the thread that started it if the tool is killed (PR_SET_PDEATHSIG), and a leftover of a killed
run is found by its name on the next start and stopped.
"""
from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

from ..guests import images
from ..errors import HostError, StopRequested
from .base import qemu_processes
from .ssh import SSHHost
from ..manifest import SSH
from ..manifest import Host as HostSpec
from ..safe import free_port, lock_or_refuse, private_dir, write_nofollow

log = logging.getLogger(__name__)

READY = "@@MEMBALLOON-NESTED"


@dataclasses.dataclass(frozen=True)
class Flavor:
    """What one kind of nested host is made of (see nested_xen.py, nested_kvm.py)."""

    kind: str               # the manifest's hosts[].kind
    title: str              # 'Xen', 'KVM'
    uri_scheme: str         # 'xen+ssh', 'qemu+ssh'
    cpu_model: str          # QEMU's -cpu for the outer machine
    console: str            # the nested host's console device that READY lines are written to
    image_name: str         # its image's name in the cache
    packages: tuple         # Debian packages the image holds
    start: str              # the part of its init that starts the hypervisor (init_script's body)
    commands: str           # what is run in the image once its packages are in
    size_mib: int           # the image's disk

    def recipe(self, spec: HostSpec | None = None) -> images.Recipe:
        """The image of the host a manifest asks for (its Debian suite), or of the default one."""
        return images.Recipe(
            name=self.image_name, suite=spec.nested.suite if spec else "bookworm", packages=self.packages,
            files=(("/usr/local/sbin/memballoon-nested-init", 0o755, init_script(self, self.start)),
                   images.SSHD_CONFIG),
            commands=self.commands, size_mib=self.size_mib)

    def qemu_command(self, spec: HostSpec, image: images.Image, state, port: int) -> list[str]:
        return qemu_command(self, spec, image, state, port)

    def boot_args(self, spec: HostSpec, image: images.Image) -> list[str]:
        """QEMU's arguments that boot the image (machine, kernel, command line, initrd)."""
        raise NotImplementedError

    def booting(self, spec: HostSpec) -> str:
        """What the progress line says while the nested host boots."""
        raise NotImplementedError

    def facts(self, spec: HostSpec) -> dict:
        """What records keep about the nested machine besides the outer QEMU, CPUs and memory."""
        return {}


def init_script(flavor: Flavor, body: str) -> str:
    """PID 1 of a nested host: mounts, QEMU's user network, then `body` (the hypervisor's daemons,
    libvirtd, sshd), then READY lines on the console; failures are said as '<what>-failed'."""
    return (r"""#!/bin/sh
# PID 1 of a nested host (written by memballoon): its hypervisor, libvirtd, sshd.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "@@MEMBALLOON-NESTED $*" > /dev/""" + flavor.console + r"""; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -o remount,rw /
say "init $(cut -d' ' -f1 /proc/uptime)"
modprobe virtio_net || say "modprobe-failed virtio_net"
# QEMU's user network: the guest is 10.0.2.15, the gateway 10.0.2.2
NIC=$(ls /sys/class/net | grep -v '^lo$' | head -n1)
ip link set lo up
ip link set "$NIC" up
ip addr add 10.0.2.15/24 dev "$NIC"
ip route add default via 10.0.2.2
mkdir -p /var/log/libvirt /run/libvirt /run/sshd
""" + body + r"""
virtlogd -d || say "virtlogd-failed"
libvirtd -d || say "libvirtd-failed"
/usr/sbin/sshd || say "sshd-failed"
say "ready $(cut -d' ' -f1 /proc/uptime)"
while :; do sleep 3600; done
""")


@dataclasses.dataclass
class Machine:
    """A running nested host: its QEMU process and how to reach it."""

    proc: subprocess.Popen
    port: int
    state: Path
    image: images.Image
    boot_seconds: float
    qemu_version: str
    lock: object = None  # held while the machine runs: a second sweep of the same host is refused


def _tag(state: Path) -> str:
    return hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:10]


def qemu_name(state: Path, host: str) -> str:
    """QEMU's -name of a nested host: how a leftover of a killed run is recognised."""
    return f"memballoon-nested-{host}-{_tag(state)}"


def kill_leftovers(state: Path, host: str) -> list[int]:
    """Stop QEMU processes a killed run left for this nested host (found by their -name)."""
    name = qemu_name(state, host).encode()
    killed = []
    for pid, argv in qemu_processes():
        if name in argv:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
    return killed


def _die_with_parent() -> None:
    """In the child (only where util-linux's setpriv is missing): SIGKILL when the thread that
    started QEMU ends, i.e. when the tool was killed."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _spawn(cmd: list[str], log_file) -> subprocess.Popen:
    """QEMU in its own session (Ctrl-C reaches the tool, which stops QEMU itself), killed by the
    kernel if the tool dies first: setpriv --pdeathsig sets that before exec'ing QEMU, without
    running Python code between fork and exec in a threaded process."""
    setpriv = shutil.which("setpriv")
    common = dict(stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    if setpriv:
        return subprocess.Popen([setpriv, "--pdeathsig", "KILL", "--", *cmd], **common)
    return subprocess.Popen(cmd, preexec_fn=_die_with_parent, **common)


def qemu_command(flavor: Flavor, spec: HostSpec, image: images.Image, state: Path, port: int) -> list[str]:
    n = spec.nested
    return [shutil.which("qemu-system-x86_64") or "qemu-system-x86_64",
            "-name", qemu_name(state, spec.name), "-nodefaults", "-accel", "tcg",
            "-cpu", flavor.cpu_model, "-smp", str(n.cpus), "-m", str(n.memory),
            "-display", "none", "-vga", "none", "-monitor", "none", "-no-reboot",
            "-serial", f"file:{state / 'console.log'}",
            *flavor.boot_args(spec, image),
            "-drive", f"file={image.disk},if=virtio,format=raw,snapshot=on",
            "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device", "virtio-net-pci,netdev=net0"]


def start(flavor: Flavor, spec: HostSpec, cache_dir: Path, note: Callable[[str], None], stop=None) -> Machine:
    """Build (or reuse) the nested host's image and boot it until its sshd answers."""
    image = images.build(flavor.recipe(spec), cache_dir, note)
    state = private_dir(private_dir(cache_dir / "nested") / spec.name)
    lock = lock_or_refuse(state / "lock", f"host {spec.name}: another sweep (pid {{holder}}) is running this nested "
                                          f"host ({state}); wait for it to finish")
    try:
        return _start_locked(flavor, spec, image, state, lock, note, stop)
    except BaseException:
        lock.close()
        raise


def _start_locked(flavor: Flavor, spec: HostSpec, image: images.Image, state: Path, lock,
                  note: Callable[[str], None], stop=None) -> Machine:
    # We hold the lock, so a QEMU of this nested host that still runs belongs to a run that was killed.
    for pid in kill_leftovers(state, spec.name):
        note(f"host {spec.name}: stopped the nested host QEMU (pid {pid}) a killed run left behind")
    version = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout
    version = version.split("version ", 1)[-1].split()[0] if "version " in version else "?"
    last_error = ""
    for _attempt in range(3):  # the port was free a moment ago; QEMU may lose a race for it
        port = free_port()
        console = state / "console.log"
        console.unlink(missing_ok=True)
        log_path = state / "qemu.log"
        t0 = time.monotonic()
        with open(log_path, "wb") as qemu_log:
            proc = _spawn(qemu_command(flavor, spec, image, state, port), qemu_log)
        note(f"host {spec.name}: {flavor.booting(spec)}")
        try:
            _wait_ready(flavor, spec, proc, state, spec.nested.boot_timeout, stop)
        except _PortTaken as e:
            last_error = str(e)
            continue
        except BaseException:
            stop_process(proc)
            raise
        return Machine(proc, port, state, image, round(time.monotonic() - t0, 1), version, lock)
    raise HostError(f"host {spec.name}: QEMU could not forward a loopback port to the nested host: {last_error}")


class _PortTaken(Exception):
    pass


def _wait_ready(flavor: Flavor, spec: HostSpec, proc: subprocess.Popen, state: Path, timeout: float,
                stop=None) -> None:
    end = time.monotonic() + timeout
    console = state / "console.log"
    while time.monotonic() < end:
        if stop is not None and stop.is_set():  # Ctrl-C or SIGTERM while the nested host boots: stop now
            raise StopRequested()
        text = console.read_text(errors="replace") if console.exists() else ""
        if f"{READY} ready" in text:
            failed = [ln.split(" ", 1)[1] for ln in text.splitlines() if ln.startswith(READY) and "-failed" in ln]
            if failed:
                raise HostError(f"host {spec.name}: the nested {flavor.title} host started, but "
                                f"{'; '.join(f[:200] for f in failed)} (see {state / 'console.log'})")
            return
        if proc.poll() is not None:
            qemu_out = (state / "qemu.log").read_text(errors="replace").strip().splitlines()
            last = next((ln for ln in reversed(qemu_out) if "warning" not in ln), "")
            if "hostfwd" in last or "Could not set up host forwarding" in last:
                raise _PortTaken(last)
            tail = [ln for ln in text.splitlines() if ln.strip()][-1:] or [last or "no output"]
            raise HostError(f"host {spec.name}: the nested host's QEMU exited ({proc.returncode}) before it was "
                            f"ready: {tail[0][:200]}")
        time.sleep(0.5)
    tail = [ln for ln in (console.read_text(errors="replace") if console.exists() else "").splitlines()
            if ln.strip()][-1:]
    raise HostError(f"host {spec.name}: the nested {flavor.title} host was not ready within {timeout:g} s (last "
                    f"console line: {tail[0][:200] if tail else 'none'}); see {console}")


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class NestedHost(SSHHost):
    """A nested host: started on first use, then measured as any remote host over SSH."""

    flavor: Flavor

    def __init__(self, spec: HostSpec, cache_dir: Path, note: Callable[[str], None] | None = None, stop=None):
        # The SSH side is set up once the machine runs (its port is known then).
        self._manifest_spec = spec
        self._note = note or (lambda m: log.info("%s", m))
        self._stop = stop
        self.machine: Machine | None = None
        self.connection = None
        self._policy = None
        super(SSHHost, self).__init__(spec, cache_dir)

    def _ensure(self) -> None:
        if self.machine is not None:
            return
        spec = self._manifest_spec
        machine = start(self.flavor, spec, self.cache_dir, self._note, self._stop)
        self.machine = machine
        try:
            known = machine.state / "known_hosts"
            host_key = machine.image.file("host_key.pub").read_text().split()
            write_nofollow(known, f"[127.0.0.1]:{machine.port} {host_key[0]} {host_key[1]}\n".encode())
            runtime = dataclasses.replace(
                spec, uri=f"{self.flavor.uri_scheme}://root@127.0.0.1:{machine.port}/system",
                ssh=SSH(user="root", port=machine.port, key=str(machine.image.file("client_key")),
                        known_hosts=str(known), accept_new_host_key=False))
            SSHHost.__init__(self, runtime, self.cache_dir)
            for _ in range(30):  # sshd said it started; give it a moment to accept
                try:
                    SSHHost.run(self, "true", hide=True)
                    break
                except HostError:
                    time.sleep(1)
            else:
                SSHHost.run(self, "true", hide=True)
        except BaseException:
            self.close()
            raise

    def run(self, command: str, **kwargs):
        self._ensure()
        return super().run(command, **kwargs)

    def put(self, local, remote: str) -> None:
        self._ensure()
        super().put(local, remote)

    def get(self, remote: str, local) -> None:
        self._ensure()
        super().get(remote, local)

    def connect(self):
        self._ensure()
        return super().connect()

    def facts(self) -> dict:
        out = super().facts()
        m = self.machine
        out["uri"] = f"{self.flavor.uri_scheme}://root@127.0.0.1/system (nested)"
        out["nested"] = {"outer": f"QEMU {m.qemu_version} (TCG) on this machine", "cpu_model": self.flavor.cpu_model,
                         "cpus": self.spec.nested.cpus, "memory_mib": self.spec.nested.memory,
                         "boot_s": m.boot_seconds, "image": m.image.folder.name,
                         **self.flavor.facts(self.spec)}
        return out

    def close(self) -> None:
        if self.connection is not None:
            try:
                super().close()
            except Exception:  # noqa: BLE001 - stopping QEMU matters more
                pass
        if self.machine is not None:
            stop_process(self.machine.proc)
            if self.machine.lock is not None:
                self.machine.lock.close()
            self.machine = None
