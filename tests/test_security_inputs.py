"""Hostile input, round two (issue 16): what a manifest, a cloned repository or a modules folder
could make the tool run, hand to a guest or write elsewhere. Each test feeds the attack through the
real path (the CLI, real git, real qemu-img, the real record writer) and asserts it is refused with
one line naming the key, and that nothing happened."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from generator.guests import probe

from generator import results
from generator.errors import UserError
from generator.manifest import load, parse_address

from test_probe import fake_modules
from test_security import BASE, cli, one_line_error, write

ROOT = Path(__file__).resolve().parents[1]


def with_host(tmp_path, host: str) -> Path:
    return write(tmp_path, BASE.replace("hosts: [{name: local}]", f"hosts: [{host}]"))


def with_guest(tmp_path, guest: str) -> Path:
    return write(tmp_path, BASE.replace("guests: [{name: g}]", f"guests: [{guest}]"))


# --- 1a. libvirt URIs that run programs or talk to odd sockets ---------------------------------------------
@pytest.mark.parametrize("uri, says", [
    ("qemu+ext:///system?command=/tmp/x", "transport 'ext' is not supported"),
    ("qemu+unix:///system?socket=/tmp/evil.sock", "transport 'unix' is not supported"),
    ("qemu:///system?socket=/tmp/evil.sock", "parameter 'socket' talks to an arbitrary socket"),
    ("qemu+tcp://h.example.org/system", "transport 'tcp' is not supported"),
    ("qemu+ssh://root@h.example.org/system?command=/tmp/x", "parameter 'command' runs a program"),
    ("qemu+ssh://root@h.example.org/system?netcat=/tmp/nc", "parameter 'netcat' runs a program on the host"),
    ("qemu+ssh://root@h.example.org/system?keyfile=/etc/shadow", "keyfile='/etc/shadow' is outside the project"),
    ("qemu+ssh://root@h.example.org/system?no_verify=1", "no_verify turns off SSH host key checking"),
    ("qemu+ssh://root@h.example.org/system?no_verify=01", "no_verify turns off SSH host key checking"),
    ("qemu+ssh://root@h.example.org/system?no_verify=2", "no_verify turns off SSH host key checking"),
    ("qemu+ssh://root@h.example.org/system?no_verify=0", "no_verify turns off SSH host key checking"),
    ("qemu+libssh://root@h.example.org/system?known_hosts_verify=ignore", "known_hosts_verify='ignore'"),
    ("qemu+ssh://root@h.example.org/system?no_tty=1&no_tty=0", "'no_tty' is given twice"),
    ("test:///default", "driver 'test' is not supported"),
    ("qemu:///embed?root=/tmp/x", "path '/embed' is not one of"),
    ("qemu+ssh:///system", "needs a host name"),
    ("qemu:///system?keyfile=/root/.ssh/k;socket=/tmp/x.sock", "';' and '%' are not allowed"),
    ("qemu+tls://h/system?no_tty=1&pkipath=/p;no_verify=1", "';' and '%' are not allowed"),
    ("qemu:///system?so%63ket=/tmp/x.sock", "';' and '%' are not allowed"),
    ("qemu+ssh://h/system?keyfile=id_ed25519", "must be an absolute path"),
    ("qemu+ssh://[::1/system", "is not a valid URI"),
])
def test_uris_outside_what_the_tool_supports_are_refused(tmp_path, uri, says):
    line = one_line_error(cli("validate", str(with_host(tmp_path, f"{{name: h, uri: '{uri}'}}"))))
    assert "hosts[0].uri" in line and says in line, line


@pytest.mark.parametrize("uri", [
    "qemu:///system", "qemu:///session", "xen:///system", "qemu+ssh://root@h.example.org/system?no_tty=1",
    "qemu+ssh://root@h.example.org/system?keyfile=~/.ssh/id_ed25519", "xen+ssh://root@[2001:db8::1]/system",
    "qemu+libssh2://h.example.org/system?known_hosts_verify=normal&sshauth=agent,privkey",
    "qemu+tls://h.example.org/system",
])
def test_supported_uris_pass(tmp_path, uri):
    out = cli("validate", str(with_host(tmp_path, f"{{name: h, uri: '{uri}'}}")))
    assert out.returncode == 0, out.stderr


def test_an_ext_uri_never_runs_its_command(tmp_path):
    """Through the sweep, which would open the URI: the command must not run."""
    marker = tmp_path / "ran"
    script = tmp_path / "evil.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    path = with_host(tmp_path, f"{{name: h, uri: 'qemu+ext:///system?command={script}'}}")
    line = one_line_error(cli("sweep", str(path), "--results", str(tmp_path / "r")))
    assert "hosts[0].uri" in line
    assert not marker.exists() and not (tmp_path / "r").exists()


# --- 1b. a results folder laid out as a git repository ----------------------------------------------------
def git(cwd, *args, check=True):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org"}
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, env=env, check=check)


def test_a_results_folder_that_is_a_git_directory_runs_nothing(tmp_path):
    project = tmp_path / "project"
    folder = project / "experiments" / "x"
    folder.mkdir(parents=True)
    (folder / "experiment.yaml").write_text(BASE)
    (folder / "p.md").write_text("x\n")
    marker = tmp_path / "pwned"
    trap = folder / "results"  # a git directory's files, which git would discover and obey
    (trap / "objects").mkdir(parents=True)
    (trap / "refs").mkdir()
    (trap / "objects" / "keep").write_text("")
    (trap / "refs" / "keep").write_text("")
    (trap / "HEAD").write_text("ref: refs/heads/main\n")
    (trap / "config").write_text(f"[core]\n\trepositoryformatversion = 0\n\tbare = false\n\tworktree = .\n"
                                 f"\tfsmonitor = touch {marker}; false\n")
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "project with a trap")
    head = git(project, "rev-parse", "HEAD").stdout.strip()
    # the trap is armed: git discovering such a folder on its own runs the command
    armed_copy = tmp_path / "armed"
    shutil.copytree(trap, armed_copy)
    git(armed_copy, "status", check=False)
    armed = marker.exists()
    marker.unlink(missing_ok=True)
    site = tmp_path / "site"
    (site / "content").mkdir(parents=True)
    (site / "hugo.toml").write_text("")
    out = cli("build", str(folder / "experiment.yaml"), "--site", str(site), cwd=project)
    assert out.returncode == 0, out.stderr
    assert not marker.exists(), "the build ran a command from the results folder's git config"
    assert (site / "content" / "posts" / "x" / "index.md").is_file()
    from generator.publish.build import results_commit
    assert results_commit(trap, project) == head  # the project's own commit, without entering the folder
    assert armed, "this git did not obey the planted config: the trap was not armed, so the test proved nothing"


# --- 2a. disk images that name host files --------------------------------------------------------------------
def qemu_img(*args):
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def test_an_image_whose_backing_file_is_a_host_file_is_refused(tmp_path):
    write(tmp_path, BASE)
    image = tmp_path / "x" / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/hostname", str(image), "1M")
    line = one_line_error(cli("validate", str(with_guest(tmp_path, f"{{name: g, image: {image}}}"))))
    assert "guests[0].image" in line and "backing file is '/etc/hostname'" in line


def test_an_image_with_an_external_data_file_is_refused(tmp_path):
    write(tmp_path, BASE)
    image = tmp_path / "x" / "disk.qcow2"
    outside = tmp_path / "data.raw"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={outside}", str(image), "1M")
    line = one_line_error(cli("validate", str(with_guest(tmp_path, f"{{name: g, image: {image}}}"))))
    assert "guests[0].image" in line and "external data file" in line


def test_a_listed_backing_file_inside_the_project_is_allowed(tmp_path):
    write(tmp_path, BASE)
    base, top = tmp_path / "x" / "base.qcow2", tmp_path / "x" / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "1M")
    qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(top), "1M")
    path = with_guest(tmp_path, f"{{name: g, image: {top}}}")
    assert "backing file" in one_line_error(cli("validate", str(path)))
    path = with_guest(tmp_path, f"{{name: g, image: {top}, backing: [base.qcow2]}}")
    assert cli("validate", str(path)).returncode == 0


def test_a_raw_image_is_never_probed(tmp_path):
    """A raw disk whose guest wrote qcow2's magic (and a backing file name) must not become a qcow2."""
    write(tmp_path, BASE)
    forged = tmp_path / "x" / "forged.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/hostname", str(forged), "1M")
    raw = tmp_path / "x" / "disk.img"
    raw.write_bytes(forged.read_bytes())
    forged.unlink()
    line = one_line_error(cli("validate", str(with_guest(tmp_path, f"{{name: g, image: {raw}}}"))))
    assert "guests[0].image" in line and "set format: qcow2" in line
    m = load(with_guest(tmp_path, f"{{name: g, image: {raw}, format: raw}}"))
    assert m.guests[0].image_format() == "raw"  # said explicitly: taken as raw, its bytes never interpreted
    anon = tmp_path / "x" / "disk.bin"
    anon.write_bytes(b"\0" * 512)
    assert "set format" in one_line_error(cli("validate", str(with_guest(tmp_path, f"{{name: g, image: {anon}}}"))))


@pytest.mark.parametrize("key", ["image", "kernel", "initrd", "modules"])
def test_host_files_outside_the_project_need_the_operators_trust(tmp_path, key):
    extra = {"image": "image: /etc/hostname, format: raw", "kernel": "kernel: /etc/hostname",
             "initrd": "image: d.img, kernel: k, initrd: /etc/hostname", "modules": "modules: /etc"}[key]
    write(tmp_path, BASE)
    (tmp_path / "x" / "d.img").write_bytes(b"\0" * 512)
    (tmp_path / "x" / "k").write_bytes(b"k")
    path = with_guest(tmp_path, f"{{name: g, {extra}}}")
    line = one_line_error(cli("validate", str(path)))
    assert f"guests[0].{key}" in line and "outside the project" in line and "--trust /etc" in line
    assert cli("validate", str(path), "--trust", "/etc").returncode == 0
    assert "--trust /: trusting / " in one_line_error(cli("validate", str(path), "--trust", "/"))


def test_symlinks_out_of_the_project_are_followed_and_refused(tmp_path):
    write(tmp_path, BASE)
    (tmp_path / "x" / "kernel").symlink_to("/etc/hostname")
    line = one_line_error(cli("validate", str(with_guest(tmp_path, "{name: g, kernel: kernel}"))))
    assert "guests[0].kernel" in line and "resolves to /etc/hostname" in line


# --- 2b. modules folders that reach out, and command lines that replace init ---------------------------------
def test_a_symlinked_module_never_reaches_the_initramfs(tmp_path):
    d = fake_modules(tmp_path)
    target = d / "kernel/drivers/virtio/virtio_balloon.ko"
    target.unlink()
    target.symlink_to("/etc/shadow")
    with pytest.raises(UserError, match="not a regular file inside the folder"):
        probe.module_closure(d, probe.VIRTIO_MODULES)


def test_modules_dep_cannot_name_files_outside_the_folder(tmp_path):
    d = fake_modules(tmp_path)
    dep = (d / "modules.dep").read_text()
    (d / "modules.dep").write_text(dep.replace("kernel/drivers/virtio/virtio_ring.ko", "/etc/virtio_ring.ko"))
    with pytest.raises(UserError, match="not a module file inside the folder"):
        probe.module_closure(d, probe.VIRTIO_MODULES)
    (d / "modules.dep").write_text(dep.replace("kernel/drivers/virtio/virtio_ring.ko", "../../../../etc/virtio_ring.ko"))
    with pytest.raises(UserError, match="not a module file inside the folder"):
        probe.module_closure(d, probe.VIRTIO_MODULES)


def test_only_kernel_modules_go_into_a_guest(tmp_path):
    with pytest.raises(UserError, match="not a kernel module"):
        probe.check_module(tmp_path / "x.ko", b"#!/bin/sh\ncat /etc/shadow\n")
    with pytest.raises(UserError, match="not a kernel module"):
        probe.check_module(tmp_path / "x.ko", b"\x7fELF\x02\x01" + b"\xff" * 100)  # ELF header, nonsense inside


@pytest.mark.parametrize("cmdline", ["x\u00e0mem=256M x\u00e0rdinit=/bin/sh", "a\tb", "swiotlb=force", "hugepages=64",
                                     "cma=64M", "initcall_blacklist=virtio_balloon_driver_init",
                                     "rdinit=/bin/sh", "init=/bin/sh", "quiet -- sh -c x", "console=tty0",
                                     "mem=512M", "memmap=1G$4G", "memballoon.mode=canary", "panic=0",
                                     "virtio_balloon.deflate_on_oom=1", "modprobe.blacklist=virtio_balloon"])
def test_cmdline_that_changes_init_or_the_measurement_is_refused(tmp_path, cmdline):
    line = one_line_error(cli("validate", str(with_guest(tmp_path, f"{{name: g, cmdline: '{cmdline}'}}"))))
    assert "guests[0].cmdline" in line


def test_harmless_cmdline_passes(tmp_path):
    assert cli("validate", str(with_guest(tmp_path, "{name: g, cmdline: 'init_on_alloc=0 nokaslr'}"))).returncode == 0


# --- 6. writing through a symlinked folder -------------------------------------------------------------------
@pytest.mark.parametrize("depth", [1, 2])
def test_records_are_not_written_through_a_symlinked_folder(tmp_path, depth):
    root = tmp_path / "results"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = root / "local" if depth == 1 else root / "local" / "debian"
    link.parent.mkdir(parents=True)
    link.symlink_to(elsewhere)
    path = root / "local" / "debian" / "memory-1024MiB-current-1024MiB-r1.json"
    with pytest.raises(UserError, match="symlink"):
        results.write_record(path, {"status": "ok"}, root=root)
    assert list(elsewhere.rglob("*")) == []
    ok = root / "other" / "g" / "r.json"
    results.write_record(ok, {"status": "ok"}, root=root)
    assert ok.is_file() and [p.name for p in ok.parent.iterdir()] == ["r.json"]  # no temporary file left


# --- 9. addresses, --only and Ctrl-C ----------------------------------------------------------------------
@pytest.mark.parametrize("text, expect", [
    ("web01", ("web01", None)), ("web01:2222", ("web01", 2222)), ("192.0.2.7:22", ("192.0.2.7", 22)),
    ("[::1]:2222", ("::1", 2222)), ("[2001:db8::1]", ("2001:db8::1", None)), ("2001:db8::1", ("2001:db8::1", None)),
])
def test_good_addresses_parse(text, expect):
    assert parse_address(text) == expect


@pytest.mark.parametrize("address", ["host:", ":22", "host:0", "host:65536", "[::1]:", "[nothost]:22", "a b",
                                     "-oProxyCommand=x", "h:2x", "[::1]x", "999.1.1.1"])
def test_bad_guest_addresses_are_one_line(tmp_path, address):
    guest = f"{{name: g, image: debian:bookworm, reading: ssh, address: '{address}'}}"
    line = one_line_error(cli("validate", str(with_guest(tmp_path, guest))))
    assert "guests[0].address" in line


@pytest.mark.parametrize("address", ["-oProxyCommand=x", "h:22", "a b"])
def test_bad_host_addresses_are_one_line(tmp_path, address):
    host = f"{{name: h, uri: 'qemu+ssh://root@h.example.org/system', address: '{address}'}}"
    line = one_line_error(cli("validate", str(with_host(tmp_path, host))))
    assert "hosts[0].address" in line


def test_only_that_matches_nothing_or_everything_is_refused_before_anything_runs(tmp_path):
    path = write(tmp_path, BASE.replace("{memory: [1 GiB]", "{repeats: 11, memory: [1 GiB]"))
    for pattern in ("", "local/g/m1024-c1024-r", "nothing"):
        line = one_line_error(cli("sweep", str(path), "--force", "--only", pattern, "--results", str(tmp_path / "r")))
        assert "--only" in line
    assert not (tmp_path / "r").exists()
    out = cli("status", str(path), "--only", "local/g/m1024-c1024-r1", "--results", str(tmp_path / "r"))
    assert out.returncode == 0 and out.stdout.count("missing ") == 1  # r1 only, not r10 and r11


def test_ctrl_c_at_any_moment_gives_no_traceback(tmp_path):
    """SIGINT while Python imports the tool, while it reads and while it builds (graph workers
    starting or drawing): exit 130 (or 0 if it had finished), never a traceback."""
    codes = []
    for delay in (0.3, 0.5, 0.8, 1.2, 1.8):  # once Python itself is up and importing the tool
        site = tmp_path / f"site{delay}"
        (site / "content").mkdir(parents=True)
        (site / "hugo.toml").write_text("")
        p = subprocess.Popen([sys.executable, "-m", "generator", "build", "--clean", "--site", str(site)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
        assert "Traceback" not in err, (delay, err)
        assert p.returncode in (0, 130), (delay, p.returncode, err)
        codes.append(p.returncode)
    assert 130 in codes


def test_the_build_does_not_write_through_a_symlinked_post_folder(tmp_path):
    """A site from a cloned repository whose post folder is a symlink out of the site: refused, nothing written."""
    from test_build import new_site, sample as _sample  # noqa: F401
    from generator.publish.build import build_all

    write(tmp_path, BASE)
    m = load(tmp_path / "x" / "experiment.yaml")
    site = new_site(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (site / "content" / "posts").mkdir(parents=True)
    (site / "content" / "posts" / "x").symlink_to(elsewhere)
    with pytest.raises(UserError, match="outside"):
        build_all([m], site=site, quiet=True)
    assert list(elsewhere.iterdir()) == []


def test_publishing_needs_none_of_the_files_a_sweep_boots(tmp_path):
    """A post rebuilds from records on a machine without the manifest's kernels or images; validate
    and sweep still check them."""
    path = with_guest(tmp_path, "{name: g, kernel: /srv/kernels/vmlinuz-9.9, modules: /srv/kernels/modules}")
    out = cli("validate", str(path))
    assert out.returncode == 1 and "guests[0].kernel" in out.stderr and "Traceback" not in out.stderr
    site = tmp_path / "site"
    (site / "content").mkdir(parents=True)
    (site / "hugo.toml").write_text("")
    assert cli("status", str(path)).returncode == 0
    out = cli("build", str(path), "--site", str(site))
    assert out.returncode == 0, out.stderr


def test_a_decompression_bomb_is_not_a_module(tmp_path):
    import lzma

    bomb = tmp_path / "virtio.ko.xz"
    bomb.write_bytes(lzma.compress(b"\0" * (probe.MAX_MODULE_BYTES + 4096)))
    assert bomb.stat().st_size < 1024 * 1024
    with pytest.raises(UserError, match="decompresses to more than"):
        probe.read_module(bomb)


def test_a_fifo_as_modules_dep_does_not_hang(tmp_path):
    d = fake_modules(tmp_path)
    (d / "modules.dep").unlink()
    os.mkfifo(d / "modules.dep")
    with pytest.raises(UserError, match="not a regular file"):
        probe.module_closure(d, probe.VIRTIO_MODULES)


def test_the_published_commit_is_read_from_the_provenance_line_only():
    from generator.publish.compare import commit_named_in

    page = ("+++\ntitle = \"git commit `aaaaaaaaaaaa`\"\n+++\n\nProse naming git commit `bbbbbbbbbbbb` in passing.\n"
            "- Raw results: 3 JSON records in `r`, git commit `cccccccccccc`.\n"
            "- a record's text \\`git commit \\`dddddddddddd\\`\n")
    assert commit_named_in(page) == "cccccccccccc"


def test_a_misspelt_record_field_is_an_error_not_none():
    r = results.Record({"status": "ok"})
    assert r.status == "ok" and r.free_m is None  # a field this record lacks
    with pytest.raises(AttributeError, match="no field 'memtotal_setled_kib'"):
        r.memtotal_setled_kib
