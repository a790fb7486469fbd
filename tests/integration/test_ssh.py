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
    host_pub = (d / "host.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    yield {"port": port, "key": str(d / "client"), "dir": d, "known_hosts": str(d / "known_hosts")}
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def workdir():
    # QEMU under a system libvirtd runs as libvirt-qemu: the folder must be reachable by it
    d = Path(tempfile.mkdtemp(prefix="mbssh-", dir="/var/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def remote(sshd, workdir, port=None, known_hosts=None, accept_new=False, cache=None) -> SSHHost:
    spec = Host(name="loop", uri="qemu+ssh://root@127.0.0.1/system", domain_type="qemu",
                ssh=SSH(user="root", port=port or sshd["port"], key=sshd["key"],
                        known_hosts=sshd["known_hosts"] if known_hosts is None else known_hosts,
                        accept_new_host_key=accept_new), workdir=str(workdir))
    return SSHHost(spec, Path(cache or tempfile.mkdtemp(prefix="mbcache-")))


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
        host.stage(local, "probe-abc-initrd.img")  # same sha256 on the host: not sent again
        assert Path(path).stat().st_mtime_ns == before
        local.write_bytes(b"changed")  # a file whose sha256 differs is replaced, never trusted by name
        host.stage(local, "probe-abc-initrd.img")
        assert Path(path).read_bytes() == b"changed"
        host.get(path, tmp_path / "back.bin")
        assert (tmp_path / "back.bin").read_bytes() == b"changed"
        console = host.console_path("mb-x-test")
        host.prepare_console(console)
        # the console is evidence: only its owner may write it (libvirt hands QEMU the descriptor)
        assert oct(Path(console).stat().st_mode & 0o777) == "0o600" and host.read_text(console) == ""
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


def test_known_host_key_is_accepted(sshd, workdir):
    host = remote(sshd, workdir)
    try:
        assert host.run("echo ok", hide=True).stdout.strip() == "ok"
    finally:
        host.close()


def test_unknown_host_key_is_refused_with_the_line_to_add(sshd, workdir, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    host = remote(sshd, workdir, known_hosts=str(empty))
    with pytest.raises(HostError) as e:
        host.run("true", hide=True)
    message = str(e.value)
    assert "\n" not in message
    assert f"unknown SSH host key for [127.0.0.1]:{sshd['port']}" in message
    assert f"ssh-keyscan -p {sshd['port']} -t ssh-ed25519 127.0.0.1 >> {empty}" in message
    assert "ssh.accept_new_host_key" in message
    assert empty.read_text() == ""  # nothing recorded without the opt-in


def test_changed_host_key_is_refused(sshd, workdir, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = (tmp_path / "other.pub").read_text().split()
    changed = tmp_path / "known_hosts"
    changed.write_text(f"[127.0.0.1]:{sshd['port']} {other[0]} {other[1]}\n")
    for accept_new in (False, True):  # accept-new never accepts a changed key
        host = remote(sshd, workdir, known_hosts=str(changed), accept_new=accept_new)
        with pytest.raises(HostError, match=r"host loop: .*the host key has CHANGED.*refusing to connect"):
            host.run("true", hide=True)
        assert changed.read_text().count("\n") == 1


def test_accept_new_records_the_key_and_then_trusts_only_it(sshd, workdir, tmp_path):
    recorded = tmp_path / "known_hosts"
    host = remote(sshd, workdir, known_hosts=str(recorded), accept_new=True)
    try:
        assert host.run("echo first", hide=True).stdout.strip() == "first"
    finally:
        host.close()
    host_pub = (sshd["dir"] / "host.pub").read_text().split()
    assert recorded.read_text() == f"[127.0.0.1]:{sshd['port']} {host_pub[0]} {host_pub[1]}\n"
    again = remote(sshd, workdir, known_hosts=str(recorded))  # no opt-in needed any more
    try:
        assert again.run("echo again", hide=True).stdout.strip() == "again"
    finally:
        again.close()


def test_libvirt_transport_is_pinned_to_the_verified_key(sshd, workdir, tmp_path):
    host = remote(sshd, workdir, cache=tmp_path / "cache")
    try:
        host.run("true", hide=True)
        uri = host.uri
        assert "no_verify" not in uri and "command=" in uri
        wrapper = tmp_path / "cache" / "ssh" / "loop-ssh"
        assert oct(wrapper.stat().st_mode & 0o777) == "0o700"
        assert oct((tmp_path / "cache" / "ssh").stat().st_mode & 0o777) == "0o700"
        pinned = (tmp_path / "cache" / "ssh" / "loop.known_hosts").read_text()
        assert pinned == Path(sshd["known_hosts"]).read_text()
        # OpenSSH through the wrapper: the pinned key works, another key for the host does not
        ok = subprocess.run([str(wrapper), "-p", str(sshd["port"]), "-i", sshd["key"], "-o", "BatchMode=yes",
                             "root@127.0.0.1", "echo pinned"], capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0 and ok.stdout.strip() == "pinned", ok.stderr
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
        other = (tmp_path / "other.pub").read_text().split()
        (tmp_path / "cache" / "ssh" / "loop.known_hosts").write_text(
            f"[127.0.0.1]:{sshd['port']} {other[0]} {other[1]}\n")
        bad = subprocess.run([str(wrapper), "-p", str(sshd["port"]), "-i", sshd["key"], "-o", "BatchMode=yes",
                              "root@127.0.0.1", "true"], capture_output=True, text=True, timeout=30)
        assert bad.returncode != 0 and "Host key verification failed" in bad.stderr
    finally:
        host.close()


def test_staged_files_are_verified_and_planted_ones_replaced(sshd, workdir, tmp_path):
    host = remote(sshd, workdir)
    try:
        local = tmp_path / "probe.bin"
        local.write_bytes(os.urandom(50_000))
        planted = workdir / "probe-x-vmlinuz"
        planted.write_bytes(b"forged, but not empty")  # a file someone left at the name is not trusted
        path = host.stage(local, "probe-x-vmlinuz")
        assert Path(path).read_bytes() == local.read_bytes()
        assert not list(workdir.glob(".upload.*"))
    finally:
        host.close()


def test_workdir_someone_else_can_write_is_refused(sshd, tmp_path):
    shared = Path(tempfile.mkdtemp(prefix="mbshared-", dir="/var/tmp"))
    try:
        shared.chmod(0o777)
        host = remote(sshd, shared)
        with pytest.raises(HostError, match=r"workdir .* is not a private folder .*mode 777"):
            host.stage(tmp_path / "x", "probe-y")
        link = Path(tempfile.mkdtemp(prefix="mblink-", dir="/var/tmp"))
        link.rmdir()
        link.symlink_to(tmp_path)
        host = remote(sshd, link)
        with pytest.raises(HostError, match=r"workdir .* is a symlink"):
            host.stage(tmp_path / "x", "probe-y")
        link.unlink()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_ssh_reader_limits_a_flood_while_reading(sshd):
    """A guest that floods its output: the reader stops at 1 MiB without holding the rest, on stdout
    and on stderr alike, and still reads ordinary output and exit codes."""
    import resource
    import time

    from generator.guests.system import ReadError, SSHReader

    reader = SSHReader("127.0.0.1", sshd["port"], "root", sshd["key"], [sshd["known_hosts"]])
    reader.ready()
    try:
        assert reader.run("/bin/echo", ["MemTotal:", "1024 kB"]) == "MemTotal: 1024 kB\n"
        with pytest.raises(ReadError, match="exited 3"):
            reader.run("/bin/sh", ["-c", "exit 3"])
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
        for stream in ("", " >&2"):
            t0 = time.monotonic()
            with pytest.raises(ReadError, match="larger than 1 MiB"):
                reader.run("/bin/sh", ["-c", f"yes 0123456789abcdef{stream}"])  # endless
            assert time.monotonic() - t0 < 15
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 32 * 1024  # no flood held in memory
        assert reader.run("/bin/echo", ["still", "usable"]) == "still usable\n"
    finally:
        reader.close()


def test_failed_remote_command_is_one_line(sshd, workdir):
    host = remote(sshd, workdir)
    try:
        with pytest.raises(HostError) as e:
            host.run("echo first >&2; echo 'the real reason' >&2; exit 3", hide=True)
        assert str(e.value) == "host loop: 'echo first >&2; echo 'the real reason' >&2; exit 3' exited 3: the real reason"
    finally:
        host.close()


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
    uri = f"qemu+ssh://root@127.0.0.1:{sshd['port']}/system?keyfile={sshd['key']}&no_tty=1"
    manifest = tmp_path / "remote" / "experiment.yaml"
    manifest.parent.mkdir()
    shutil.copy(sshd["known_hosts"], manifest.parent / "known_hosts")
    manifest.write_text(f"""
experiment: remote
hosts:
  - name: loop
    uri: '{uri}'
    domain_type: qemu
    ssh: {{user: root, port: {sshd['port']}, key: {sshd['key']}, known_hosts: known_hosts}}
    workdir: {workdir}
guests: [{{name: debian, kernel: host}}]
sweep: {{memory: [1 GiB, 2 GiB], current_memory: [1024 MiB]}}
timeouts: {{stable: 3s}}
post: {{slug: remote, title: remote, content: post.md}}
""")
    (manifest.parent / "post.md").write_text("x\n")
    # the URI's keyfile is outside the project: the operator trusts its folder
    out = cli(embed_env, "sweep", str(manifest), "--results", str(tmp_path / "res"), "--trust", str(sshd["dir"]))
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
    assert len(list(workdir.glob("probe-*-vmlinu[xz]"))) == 1  # the kernel (PVH: the uncompressed one)
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
    assert out.stderr.count("host gone:") == 1  # told once, at the end
    assert "error: host gone:" in out.stderr
    [rec] = [json.loads(p.read_text()) for p in (tmp_path / "res").rglob("*.json")]
    assert rec["host"] == "local" and rec["status"] == "ok"
