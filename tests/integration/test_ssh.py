"""A remote host for real: Fabric over a real sshd on loopback, and a sweep through qemu+ssh://.

The "remote" is this machine, reached over SSH on 127.0.0.1 with its own sshd (and, for the sweep,
libvirtd and virtlogd started by the test): the same code paths a KVM host elsewhere would take.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from generator.errors import HostError
from generator.hosts import SSHHost
from generator.manifest import SSH, Host

from .conftest import cli, wait_for

pytestmark = pytest.mark.ssh


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """sshd on 127.0.0.1:<port> accepting one fresh key for root."""
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"UsePAM no\nStrictModes no\nPidFile {d / 'sshd.pid'}\nSubsystem sftp internal-sftp\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    wait_for(listening, 20, "sshd to listen")
    yield {"port": port, "key": str(d / "client"), "dir": d}
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def workdir():
    # QEMU under a system libvirtd runs as libvirt-qemu: the folder must be reachable by it
    d = Path(tempfile.mkdtemp(prefix="mbssh-", dir="/var/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def remote(sshd, workdir, port=None) -> SSHHost:
    spec = Host(name="loop", uri="qemu+ssh://root@127.0.0.1/system", domain_type="qemu",
                ssh=SSH(user="root", port=port or sshd["port"], key=sshd["key"]), workdir=str(workdir))
    return SSHHost(spec, Path(tempfile.gettempdir()))


def test_fabric_runs_puts_and_gets_over_real_ssh(sshd, workdir, tmp_path):
    host = remote(sshd, workdir)
    try:
        assert host.run("echo $((6 * 7))", hide=True).stdout.strip() == "42"
        local = tmp_path / "probe.bin"
        local.write_bytes(os.urandom(100_000))
        path = host.stage(local, "probe-abc-initrd.img")
        assert path == f"{workdir}/probe-abc-initrd.img"
        assert Path(path).read_bytes() == local.read_bytes()
        assert oct(Path(path).stat().st_mode & 0o777) == "0o644"
        before = Path(path).stat().st_mtime_ns
        local.write_bytes(b"changed")  # same name = same content hash: not sent again
        host.stage(local, "probe-abc-initrd.img")
        assert Path(path).stat().st_mtime_ns == before
        host.get(path, tmp_path / "back.bin")
        assert (tmp_path / "back.bin").stat().st_size == 100_000
        console = host.console_path("mb-x-test")
        host.prepare_console(console)
        assert oct(Path(console).stat().st_mode & 0o777) == "0o666" and host.read_text(console) == ""
        Path(console).write_text("hello\n")
        assert host.read_text(console) == "hello\n"
        host.remove(console)
        assert not Path(console).exists() and host.read_text(console) == ""
    finally:
        host.close()


def test_unreachable_ssh_host_names_the_host(sshd, workdir):
    host = remote(sshd, workdir, port=free_port())
    with pytest.raises(HostError, match=r"host loop: SSH to root@127.0.0.1:\d+ failed"):
        host.run("true", hide=True)


@pytest.fixture(scope="module")
def libvirtd():
    """The system libvirtd (and virtlogd) the qemu+ssh:// URI talks to; started if not running."""
    started = []
    if not Path("/run/libvirt/libvirt-sock").exists():
        for daemon in ("virtlogd", "libvirtd"):
            subprocess.run([f"/usr/sbin/{daemon}", "--daemon"], check=True)
            started.append(daemon)
        wait_for(lambda: Path("/run/libvirt/libvirt-sock").exists(), 30, "libvirtd's socket")
    yield
    for daemon in reversed(started):
        subprocess.run(["pkill", "-x", daemon])


def test_sweep_on_a_remote_host_over_qemu_ssh(sshd, libvirtd, workdir, tmp_path, embed_env):
    uri = f"qemu+ssh://root@127.0.0.1:{sshd['port']}/system?keyfile={sshd['key']}&no_verify=1&no_tty=1"
    manifest = tmp_path / "remote" / "experiment.yaml"
    manifest.parent.mkdir()
    manifest.write_text(f"""
experiment: remote
hosts:
  - name: loop
    uri: '{uri}'
    domain_type: qemu
    ssh: {{user: root, port: {sshd['port']}, key: {sshd['key']}}}
    workdir: {workdir}
guests: [{{name: debian, kernel: host}}]
sweep: {{memory: [1 GiB, 2 GiB], current_memory: [1024 MiB]}}
timeouts: {{stable: 3s}}
post: {{slug: remote, title: remote, content: post.md}}
""")
    (manifest.parent / "post.md").write_text("x\n")
    out = cli(embed_env, "sweep", str(manifest), "--results", str(tmp_path / "res"))
    assert out.returncode == 0, out.stderr
    recs = {json.loads(p.read_text())["memory_mib"]: json.loads(p.read_text()) for p in (tmp_path / "res").rglob("*.json")}
    assert sorted(recs) == [1024, 2048]
    for memory, r in recs.items():
        assert r["status"] == "ok", r
        assert r["host"] == "loop" and r["domain_type"] == "qemu"
        assert 0.85 * memory * 1024 < r["memtotal_boot_kib"] <= memory * 1024
        assert r["memtotal_settled_kib"] < 1024 * 1024
        assert r["host_view"]["max_memory_kib"] == memory * 1024
    assert recs[2048]["memtotal_settled_kib"] < recs[1024]["memtotal_settled_kib"]
    # the probe was staged on the "remote" by content hash, and no console or domain is left
    assert len(list(workdir.glob("probe-*-vmlinuz"))) == 1
    assert list((workdir / "consoles").iterdir()) == []
    listed = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"], capture_output=True, text=True)
    assert "mb-" not in listed.stdout


def test_sweep_on_the_local_system_libvirtd(libvirtd, workdir, tmp_path, embed_env):
    manifest = tmp_path / "system" / "experiment.yaml"
    manifest.parent.mkdir()
    manifest.write_text(f"""
experiment: system
hosts: [{{name: sys, uri: 'qemu:///system', domain_type: qemu, workdir: {workdir}}}]
guests: [{{name: debian, kernel: host}}]
sweep: {{memory: [2 GiB], current_memory: [1024 MiB]}}
timeouts: {{stable: 3s}}
post: {{slug: system, title: system, content: post.md}}
""")
    (manifest.parent / "post.md").write_text("x\n")
    out = cli(embed_env, "sweep", str(manifest), "--results", str(tmp_path / "res"))
    assert out.returncode == 0, out.stderr
    [rec] = [json.loads(p.read_text()) for p in (tmp_path / "res").rglob("*.json")]
    assert rec["status"] == "ok", rec
    assert rec["memtotal_settled_kib"] < 1024 * 1024 < rec["memtotal_boot_kib"]
    assert rec["balloon"]["actual"] == 1024 * 1024


def test_one_unreachable_host_does_not_hide_the_others(tmp_path, embed_env):
    port = free_port()  # nothing listens there
    manifest = tmp_path / "two" / "experiment.yaml"
    manifest.parent.mkdir()
    manifest.write_text(f"""
experiment: two
hosts:
  - {{name: local, uri: embedded, domain_type: qemu}}
  - {{name: gone, uri: 'qemu+ssh://root@127.0.0.1:{port}/system', ssh: {{port: {port}}}}}
guests: [{{name: debian, kernel: host}}]
sweep: {{memory: [1 GiB], current_memory: [1024 MiB]}}
timeouts: {{stable: 3s}}
post: {{slug: two, title: two, content: post.md}}
""")
    (manifest.parent / "post.md").write_text("x\n")
    out = cli(embed_env, "sweep", str(manifest), "--results", str(tmp_path / "res"))
    assert out.returncode == 1
    assert "error: host gone:" in out.stderr
    [rec] = [json.loads(p.read_text()) for p in (tmp_path / "res").rglob("*.json")]
    assert rec["host"] == "local" and rec["status"] == "ok"
