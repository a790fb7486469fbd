"""Full-system guests: a whole distribution on a disk, read through the QEMU guest agent.

`image: debian:<suite>` is a small bootable Debian the tool builds itself (see `images`): systemd,
procps, qemu-guest-agent, the distribution's kernel and initramfs, on an ext4 disk. `image: <path>`
is a qcow2 or raw disk the user already has. Either way each point boots a throwaway qcow2 overlay
whose backing file is opened read-only, so the image is never written; the overlay goes with the
point, and a killed run's overlays are removed at the next start.

The guest's view is read through the agent (``guest-exec`` of ``free -m`` and ``cat /proc/meminfo``
over libvirt's ``qemuAgentCommand``), once the agent answers and the balloon has reached its target.
"""
from __future__ import annotations

import base64
import json
import logging
import re
import time
from pathlib import Path

from . import images
from ..text import bounded_int, plain

# What an image without the agent runs at boot so that it can be read from its console
# (`reading: console`); users copy these two files into their own images.
GUEST_FILES = Path(__file__).resolve().parents[2] / "guest"

SYSTEM_COMMANDS = r"""
echo memballoon-guest > /etc/hostname
printf '/dev/vda / ext4 defaults 0 1\n' > /etc/fstab
systemctl set-default multi-user.target
""" + images.SMALL_INITRAMFS + r"""
# the kernel and initramfs the domain boots directly (the image has no boot loader)
cp /boot/vmlinuz-* /memballoon-export/vmlinuz
cp /boot/initrd.img-* /memballoon-export/initrd.img
"""


SSH_COMMANDS = "systemctl enable systemd-networkd ssh\n" + images.SSH_KEYS


def debian_recipe(suite: str, reading: str = "agent") -> images.Recipe:
    """A minimal full Debian system: what a reader's guest runs, at its smallest. For reading
    'agent' it runs the QEMU guest agent; for 'console' it has no agent and runs memballoon-report
    at boot instead (the files in guest/, as a user would add them to an image of their own)."""
    packages = ("systemd-sysv", "udev", "kmod", "procps", "qemu-guest-agent", "linux-image-amd64",
                "initramfs-tools", "util-linux")
    if reading == "agent":
        return images.Recipe(name=f"debian-{suite}", suite=suite, packages=packages, commands=SYSTEM_COMMANDS,
                             size_mib=2048)
    packages = tuple(p for p in packages if p != "qemu-guest-agent")
    if reading == "ssh":
        files = (("/etc/systemd/network/80-memballoon.network", 0o644, "[Match]\nName=en*\n\n[Network]\nDHCP=yes\n"),
                 images.SSHD_CONFIG)
        return images.Recipe(name=f"debian-{suite}-ssh", suite=suite, packages=packages + ("openssh-server",),
                             files=files, commands=SYSTEM_COMMANDS + SSH_COMMANDS, size_mib=2048)
    files = (("/usr/local/sbin/memballoon-report", 0o755, (GUEST_FILES / "memballoon-report").read_text()),
             ("/etc/systemd/system/memballoon-report.service", 0o644,
              (GUEST_FILES / "memballoon-report.service").read_text()))
    return images.Recipe(name=f"debian-{suite}-console", suite=suite, packages=packages, files=files,
                         commands=SYSTEM_COMMANDS + "systemctl enable memballoon-report.service\n", size_mib=2048)


class ReadError(Exception):
    """The guest could not be read (agent or sshd not answering, timed out, command failed)."""




def agent(dom, command: str, arguments: dict | None = None, timeout: int = 10) -> object:
    """One QEMU guest agent command through libvirt; its 'return' value."""
    import libvirt
    import libvirt_qemu

    try:
        out = libvirt_qemu.qemuAgentCommand(dom, json.dumps({"execute": command, **(
            {"arguments": arguments} if arguments else {})}), timeout, 0)
    except libvirt.libvirtError as e:
        raise ReadError(" ".join((e.get_error_message() or str(e)).split())[:200]) from None
    try:
        return json.loads(out)["return"]
    except (ValueError, KeyError, TypeError):
        raise ReadError(f"unexpected answer from the agent: {out[:200]!r}") from None


def agent_exec(dom, path: str, args: list[str], timeout: float = 20.0, limit: int = 1 << 20) -> str:
    """Run a program in the guest through the agent and return its standard output (text)."""
    started = agent(dom, "guest-exec", {"path": path, "arg": args, "capture-output": True})
    pid = started.get("pid") if isinstance(started, dict) else None
    if not isinstance(pid, int):
        raise ReadError(f"guest-exec of {path} returned no pid")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        status = agent(dom, "guest-exec-status", {"pid": pid})
        if isinstance(status, dict) and status.get("exited"):
            if status.get("exitcode", 0) != 0:
                raise ReadError(f"{path} exited {status.get('exitcode')} in the guest")
            data = status.get("out-data", "")
            if not isinstance(data, str) or len(data) > limit:
                raise ReadError(f"{path}: output missing or larger than {limit} bytes")
            return base64.b64decode(data).decode("utf-8", "replace")
        time.sleep(0.2)
    raise ReadError(f"{path} did not finish in the guest within {timeout:g} s")


_OOM_KILL_RE = re.compile(r"Out of memory: Killed process [0-9]{1,10} \(([^)\n]{1,64})\)")


def oom_kills(console: str) -> list[str]:
    """Names of processes the guest's OOM killer killed, in order, from its console (control characters
    dropped: the names are printed and stored)."""
    return [name for name in map(plain, _OOM_KILL_RE.findall(console)) if name]


_RELEASE_RE = re.compile(r"[A-Za-z0-9_.+~-]{1,100}")


def kernel_release(text: str) -> str | None:
    """A kernel release as a guest reports it (`uname -r` through the agent or SSH, the 'kernel' marker
    on its console), if it looks like one: at most 100 letters, digits and . _ + ~ -; else None."""
    text = text.strip()
    return text if _RELEASE_RE.fullmatch(text) else None


ESSENTIAL = ("systemd", "init", "qemu-ga", "systemd-journal")  # losing one of these is losing the system


def parse_memtotal(meminfo: str) -> int | None:
    m = re.search(r"^MemTotal:\s+([0-9]+) kB", meminfo, re.M)
    return bounded_int(m.group(1)) if m else None


class AgentReader:
    """Reads a guest through the QEMU guest agent."""

    name, what, hint = "agent", "the guest agent", "does the image run qemu-guest-agent?"

    def __init__(self, dom):
        self.dom = dom

    def ready(self) -> None:
        agent(self.dom, "guest-ping", timeout=2)

    def run(self, path: str, args: list[str]) -> str:
        return agent_exec(self.dom, path, args)

    def close(self) -> None:
        pass


class SSHReader:
    """Reads a guest over SSH (Fabric), its host key checked against known_hosts like any host's;
    through the hypervisor host's own SSH connection when that host is remote."""

    name, what, hint = "ssh", "the guest's sshd", "is sshd running and the guest's address right?"

    def __init__(self, address: str, port: int, user: str, key: str, known_hosts: list[str], gateway=None):
        self.args = (address, port, user, key, known_hosts, gateway)
        self.known_hosts = known_hosts
        self.conn = None
        # while the guest boots, connections fail by design; paramiko would log each one as an error
        logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)

    def ready(self) -> None:
        import paramiko
        from fabric import Connection

        address, port, user, key, known_hosts, gateway = self.args
        conn = Connection(address, user=user, port=port, gateway=gateway, connect_timeout=3,
                          connect_kwargs={"key_filename": key, "look_for_keys": False, "allow_agent": False}
                          if key else {})
        for path in known_hosts:
            conn.client.load_host_keys(path)
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            conn.run("true", hide=True, in_stream=False, timeout=10)
        except paramiko.BadHostKeyException as e:
            conn.close()
            raise ReadError(f"the guest's SSH host key has CHANGED ({e.key.get_name()}); refusing it") from None
        except Exception as e:  # noqa: BLE001 - not up yet, refused, unknown key: all 'not ready'
            conn.close()
            raise ReadError(" ".join(str(e).split())[:200] or type(e).__name__) from None
        self.conn = conn

    LIMIT = 1 << 20  # bytes of output per command, counted while reading: a guest may flood

    def run(self, path: str, args: list[str], timeout: float = 20.0) -> str:
        """A command's standard output, read from the channel in chunks and cut off (the command
        abandoned) as soon as it passes LIMIT: nothing larger is ever held in memory."""
        import shlex
        import time

        try:
            channel = self.conn.client.get_transport().open_session(timeout=10)
        except Exception as e:  # noqa: BLE001
            raise ReadError(" ".join(str(e).split())[:200] or type(e).__name__) from None
        try:
            channel.settimeout(1.0)
            channel.exec_command(shlex.join([path, *args]))
            chunks, size, deadline = [], 0, time.monotonic() + timeout
            while True:
                if time.monotonic() > deadline:
                    raise ReadError(f"{path} did not finish within {timeout:.0f} s in the guest")
                while channel.recv_stderr_ready():  # dropped, but counted: a flood there is a flood too
                    size += len(channel.recv_stderr(65536))
                if size > self.LIMIT:
                    raise ReadError(f"{path}: output larger than 1 MiB")
                try:
                    chunk = channel.recv(65536)
                except OSError:  # socket.timeout: nothing yet
                    continue
                if not chunk:
                    break
                size += len(chunk)
                if size > self.LIMIT:
                    raise ReadError(f"{path}: output larger than 1 MiB")
                chunks.append(chunk)
            while not channel.status_event.wait(0.2):  # the exit status, within the same deadline
                while channel.recv_stderr_ready():
                    size += len(channel.recv_stderr(65536))
                if size > self.LIMIT:
                    raise ReadError(f"{path}: output larger than 1 MiB")
                if time.monotonic() > deadline:
                    raise ReadError(f"{path} did not finish within {timeout:.0f} s in the guest")
            status = channel.recv_exit_status()
        except ReadError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ReadError(" ".join(str(e).split())[:200] or type(e).__name__) from None
        finally:
            channel.close()
        if status != 0:
            raise ReadError(f"{path} exited {status} in the guest")
        return b"".join(chunks).decode("utf-8", errors="replace")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
