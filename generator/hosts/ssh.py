"""A remote hypervisor over SSH: commands and files through Fabric, libvirt through its own SSH
transport pinned to the host key Fabric verified."""
from __future__ import annotations

import hashlib
import os
import shlex
import threading
import urllib.parse
from pathlib import Path
from typing import Any

from ..errors import HostError, UserError
from ..manifest import Host as HostSpec
from ..safe import private_dir, write_nofollow

from .base import HostRuntime, _unexpected_exit, log


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
