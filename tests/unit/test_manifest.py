"""Reading a manifest (generator/manifest.py): every problem in one line naming its key, sizes in
libvirt's units, and what a manifest from someone else may not do: URIs that run commands, host files
outside the project, kernel command lines that change the measurement, unbounded YAML."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from generator.errors import ManifestError, UserError
from generator.manifest import find_manifests, load, parse_address
from tests.support import ROOT, main, one_line_error  # noqa: F401
from tests.support.manifests import BASE, with_guest, with_host, write  # noqa: F401


def problems(write_manifest, **kw):
    with pytest.raises(ManifestError) as e:
        load(write_manifest(**kw))
    return e.value.problems


def test_default_manifest_is_the_2012_experiment():
    [path] = [p for p in find_manifests(ROOT / "experiments") if p.parent.name == "memory-ballooning"]
    m = load(path)
    assert m.sweep.memory == [1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072]  # to 128 GiB, past 2012's 32
    assert [g.kernel for g in m.guests if not g.is_system] == ["host", "debian:trixie", "debian:bullseye"]
    assert [(g.image, g.hosts) for g in m.guests if g.is_system] == [("debian:bookworm", ["local"])]
    assert m.sweep.memory_model == ["balloon"] and m.hosts[0].memory_backing == "auto"
    assert m.sweep.current_memory == [1024]
    assert [(h.name, h.kind) for h in m.hosts] == [("local", "libvirt"), ("xen", "nested-xen"), ("kvm", "nested-kvm")]
    assert m.hosts[2].nested_domain_type == "kvm" and m.hosts[2].hypervisor.name == "qemu"
    # KVM nested under TCG: to 32 GiB, three repeats, the balloon's pages not zeroed (init_on_alloc=0)
    assert m.hosts[2].sweep == {"memory_mib": (1024, 2048, 4096, 8192, 16384, 32768)} and m.hosts[2].repeats == 0
    assert m.hosts[2].guest_cmdline == "init_on_alloc=0" and not m.hosts[0].guest_cmdline
    assert m.hosts[0].is_embedded and not m.hosts[1].is_embedded and m.hosts[1].hypervisor.name == "xen"
    assert m.guests[0].kernel == "host"
    assert len(m.sha256) == 64
    # relative paths resolve against the manifest's folder
    assert Path(m.results) == path.parent / "results"
    assert Path(m.post.content).exists()


def test_good_manifest(write_manifest):
    m = load(write_manifest(memory="[1 GiB, 2048 MiB, 4G]"))
    assert m.sweep.memory == [1024, 2048, 4096]
    assert m.hosts[0].domain_type == "qemu"
    assert m.timeouts.stable == 3
    assert m.balloon.model == "auto" and m.balloon_model(m.hosts[0]) == "virtio" and m.balloon.stats_period == 1


def test_bad_size_names_its_key_path(write_manifest):
    got = problems(write_manifest, memory="[1 GiB, 2 GiB, 4 GiB, 16X]")
    assert got == ["sweep.memory[3]: '16X' has an unknown unit 'X' (use KiB, MiB, GiB, TiB, k, M, G, T, KB, MB, GB)"]


def test_every_problem_is_collected(write_manifest):
    got = problems(write_manifest, memory="[1 GiB, 1000]", domain_type="kvmm", extra="""
        balloon:
          modle: virtio
        """)
    text = "\n".join(got)
    assert "sweep.memory[1]: 1000 has no unit" in text
    assert "hosts[0].domain_type: 'kvmm' is not one of auto, kvm, qemu, xen (did you mean 'kvm'?)" in text
    assert "balloon.modle: unknown key; did you mean 'model'?" in text
    assert len(got) == 3


def test_unknown_key_suggests_the_libvirt_spelling(write_manifest):
    text = "\n".join(problems(write_manifest, text="""
experiment: x
hosts: [{name: local}]
guests: [{name: g}]
sweep: {memory: [1 GiB], currentMemory: [1 GiB]}
post: {slug: x, title: t, content: p.md}
"""))
    assert "sweep.currentMemory: unknown key; did you mean 'current_memory'?" in text
    assert "sweep.current_memory: is required" in text


def test_missing_sections_and_wrong_types(write_manifest):
    got = problems(write_manifest, text="experiment: Bad Name\nhosts: local\n")
    text = "\n".join(got)
    assert "experiment: 'Bad Name' is not a valid name" in text
    assert "hosts: expected a list, got str" in text
    for key in ("guests", "sweep", "post"):
        assert f"{key}: is required" in text


def test_duplicates_and_unusable_sweeps(write_manifest):
    got = problems(write_manifest, text="""
experiment: x
hosts: [{name: a}, {name: a, uri: 'qemu:///system'}]
guests: [{name: g}]
sweep: {memory: [1 GiB, 1024 MiB], current_memory: [2 GiB], repeats: 0}
post: {slug: x, title: t, content: p.md}
""")
    text = "\n".join(got)
    assert "hosts[1].name: 'a' is already used by hosts[0]" in text
    assert "sweep.memory[1]: 1024 is already used by sweep.memory[0]" in text
    assert "sweep.repeats: 0 is not a whole number from 1 to 1000" in text


def test_sizes_must_be_whole_mib(write_manifest):
    assert problems(write_manifest, memory="[1000 KiB]") == [
        "sweep.memory[0]: '1000 KiB' must be a positive whole number of MiB (e.g. '1536 MiB', '2 GiB')"]


@pytest.mark.parametrize("size, mib, suggestion", [("2GB", "1,907.35", "2 GiB"), ("1500 MB", "1,430.51", "1500 MiB"),
                                                   ("16gb", "15,258.79", "16 GiB")])
def test_decimal_units_are_explained_with_the_conversion(write_manifest, size, mib, suggestion):
    [line] = problems(write_manifest, memory=f"[{size}]")
    assert line.startswith(f"sweep.memory[0]: '{size}' is ") and f"({mib} MiB)" in line and f"write '{suggestion}'" in line


def test_files_validate_can_see_are_checked(write_manifest):
    """What would make the sweep or the build fail later is said now, with the key and the fix."""
    text = write_manifest().read_text().replace("kernel: host", "kernel: hots\n    hosts: [kvm1]")
    path = write_manifest(text=text)
    (path.parent / "post.md").unlink()
    with pytest.raises(ManifestError) as e:
        load(path)
    got = "\n".join(e.value.problems)
    assert "guests[0].kernel: " in got and "no such kernel file" in got and "did you mean 'host'?" in got
    assert "post.content: " in got and "no such file" in got
    assert "guests[0].hosts: 'kvm1' is not a host of this manifest (its hosts: local)" in got


def test_alias_bomb_is_refused_within_a_second(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for i, name in enumerate("bcdefghij"):
        prev = "abcdefghij"[i]
        bomb += f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]\n"
    t0 = time.monotonic()
    with pytest.raises(ManifestError, match="expands to more than 20000 values"):
        load(write(tmp_path, bomb + BASE))
    assert time.monotonic() - t0 < 1.0


def test_huge_lists_and_plans_are_refused_quickly(tmp_path):
    big = "[" + ", ".join(f"{i + 1} GiB" for i in range(2000)) + "]"
    t0 = time.monotonic()
    with pytest.raises(ManifestError, match=r"sweep.memory: has 2000 items; at most 1000"):
        load(write(tmp_path, BASE.replace("[1 GiB]", big)))
    with pytest.raises(ManifestError, match=r"sweep.repeats: 1000000000 is not a whole number from 1 to 1000"):
        load(write(tmp_path, BASE.replace("current_memory: [1024 MiB]", "current_memory: [1024 MiB], repeats: 1000000000")))
    many = "[" + ", ".join(f"{i + 1} GiB" for i in range(500)) + "]"
    with pytest.raises(ManifestError, match=r"asks for 50000 points .* at most 20000"):
        load(write(tmp_path, BASE.replace("[1 GiB]", many).replace("current_memory: [1024 MiB]",
                                                                   "current_memory: [1024 MiB], repeats: 100")))
    assert time.monotonic() - t0 < 2.0
    with pytest.raises(UserError, match="bytes, more than the 262144 allowed"):
        load(write(tmp_path, BASE + "#" * 300_000 + "\n"))


@pytest.mark.parametrize("change,message", [
    (("post: {slug: x", "post: {date: 2026-13-45, slug: x"), "line 5, column 14: '2026-13-45' is not a valid date"),
    (("[1 GiB]", "[1 GiB]\n  memory: [2 GiB]"), None),  # flow mapping: not a duplicate but a YAML error
    (("experiment: x\n", "experiment: x\nexperiment: y\n"), "line 2, column 1: duplicate key 'experiment' (first at line 1)"),
    (("current_memory: [1024 MiB]}", "current_memory: [1024 MiB]}\ntimeouts: {boot: .inf}"),
     "timeouts.boot: inf is outside 0.001 s .. 604800 s"),
    (("current_memory: [1024 MiB]}", "current_memory: [1024 MiB]}\ntimeouts: {settle: .nan}"),
     "timeouts.settle: nan is outside"),
    (("current_memory: [1024 MiB]}", "current_memory: [1024 MiB]}\nballoon: {stats_period: 0.5s}"),
     "balloon.stats_period: '0.5s' is outside 1 s .. 3600 s"),
    (("{name: local}", "{name: r, uri: 'qemu+ssh://root@h/system', ssh: {port: 70000}}"),
     "hosts[0].ssh.port: 70000 is not a whole number from 1 to 65535"),
    (("{name: local}", "{name: r, uri: 'qemu+ssh://root@h/system', workdir: ''}"), None),
    (("{name: local}", "{name: r, uri: 'qemu+ssh://root@h/system', workdir: /}"), "hosts[0].workdir: '/' is not an absolute folder"),
    (("{name: local}", "{name: r, uri: 'qemu+ssh://root@h/system', workdir: /var/../etc}"), "hosts[0].workdir: '/var/../etc'"),
    (("{name: local}", "{name: r, uri: 'qemu+ssh://root@h/system?no_verify=1'}"), "no_verify turns off SSH host key checking"),
    (("[1 GiB]", "[1000000000000000000000000000000 GiB]"), "sweep.memory[0]: '1000000000000000000000000000000 GiB' is outside"),
    (("current_memory: [1024 MiB]}", "current_memory: [1024 MiB]}\nballoon: {model: xen}"),
     "balloon.model: 'xen' is not QEMU/KVM's balloon, and host(s) local run QEMU/KVM"),
    (("{name: g}", "{name: \"g\\n\"}"), "guests[0].name: 'g\\n' is not a valid name"),
    (("{name: g}", "{name: ../../etc}"), "guests[0].name: '../../etc' is not a valid name"),
    (("slug: x", "slug: 'x/../../y'"), "post.slug: 'x/../../y' is not a valid name"),
    (("experiment: x", "experiment: 'a/b'"), "experiment: 'a/b' is not a valid name"),
    (("{name: g}", "{name: g, kernel: \"debian:trixie\\nmain\"}"), "is not a Debian suite"),
    (("content: p.md", "content: /etc/hostname"), "post.content: '/etc/hostname' resolves to /etc/hostname, outside the project folder"),
    (("content: p.md", "content: ../../../../etc/hostname"), "outside the project folder"),
    (("post: {", "results: /tmp\npost: {"), "results: '/tmp' resolves to /tmp, outside the project folder"),
    (("post: {slug: x", "post: {original: 'javascript:alert(1)', slug: x"), "post.original: 'javascript:alert(1)' is not an http(s) URL"),
    (("title: t", "title: \"a\\u0000b\""), "post.title: contains control characters"),
])
def test_bad_values_are_one_clear_problem(tmp_path, change, message):
    old, new = change
    assert old in BASE
    path = write(tmp_path, BASE.replace(old, new, 1))
    if message is None:
        try:
            load(path)
        except ManifestError:
            pass
        return
    with pytest.raises(ManifestError) as e:
        load(path)
    assert any(message in p for p in e.value.problems), e.value.problems


def test_kernel_suite_with_a_newline_does_not_reach_apt(tmp_path):
    with pytest.raises(ManifestError) as e:
        load(write(tmp_path, BASE.replace("{name: g}", '{name: g, kernel: "debian:trixie\\n"}')))
    assert "guests[0].kernel" in "\n".join(e.value.problems)


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
    line = one_line_error(main("validate", str(with_host(tmp_path, f"{{name: h, uri: '{uri}'}}"))))
    assert "hosts[0].uri" in line and says in line, line


@pytest.mark.parametrize("uri", [
    "qemu:///system", "qemu:///session", "xen:///system", "qemu+ssh://root@h.example.org/system?no_tty=1",
    "qemu+ssh://root@h.example.org/system?keyfile=~/.ssh/id_ed25519", "xen+ssh://root@[2001:db8::1]/system",
    "qemu+libssh2://h.example.org/system?known_hosts_verify=normal&sshauth=agent,privkey",
    "qemu+tls://h.example.org/system",
])
def test_supported_uris_pass(tmp_path, uri):
    out = main("validate", str(with_host(tmp_path, f"{{name: h, uri: '{uri}'}}")))
    assert out.returncode == 0, out.stderr


def test_an_ext_uri_never_runs_its_command(tmp_path):
    """Through the sweep, which would open the URI: the command must not run."""
    marker = tmp_path / "ran"
    script = tmp_path / "evil.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    path = with_host(tmp_path, f"{{name: h, uri: 'qemu+ext:///system?command={script}'}}")
    line = one_line_error(main("sweep", str(path), "--results", str(tmp_path / "r")))
    assert "hosts[0].uri" in line
    assert not marker.exists() and not (tmp_path / "r").exists()


@pytest.mark.parametrize("key", ["image", "kernel", "initrd", "modules"])
def test_host_files_outside_the_project_need_the_operators_trust(tmp_path, key):
    extra = {"image": "image: /etc/hostname, format: raw", "kernel": "kernel: /etc/hostname",
             "initrd": "image: d.img, kernel: k, initrd: /etc/hostname", "modules": "modules: /etc"}[key]
    write(tmp_path, BASE)
    (tmp_path / "x" / "d.img").write_bytes(b"\0" * 512)
    (tmp_path / "x" / "k").write_bytes(b"k")
    path = with_guest(tmp_path, f"{{name: g, {extra}}}")
    line = one_line_error(main("validate", str(path)))
    assert f"guests[0].{key}" in line and "outside the project" in line and "--trust /etc" in line
    assert main("validate", str(path), "--trust", "/etc").returncode == 0
    assert "--trust /: trusting / " in one_line_error(main("validate", str(path), "--trust", "/"))


def test_symlinks_out_of_the_project_are_followed_and_refused(tmp_path):
    write(tmp_path, BASE)
    (tmp_path / "x" / "kernel").symlink_to("/etc/hostname")
    line = one_line_error(main("validate", str(with_guest(tmp_path, "{name: g, kernel: kernel}"))))
    assert "guests[0].kernel" in line and "resolves to /etc/hostname" in line


@pytest.mark.parametrize("cmdline", ["x\u00e0mem=256M x\u00e0rdinit=/bin/sh", "a\tb", "swiotlb=force", "hugepages=64",
                                     "reservelow=640K", "dhash_entries=67108864", "nokaslr ihash_entries=1",
                                     "rd.systemd.unit=emergency.target",
                                     "cma=64M", "initcall_blacklist=virtio_balloon_driver_init",
                                     "rdinit=/bin/sh", "init=/bin/sh", "quiet -- sh -c x", "console=tty0",
                                     "mem=512M", "memmap=1G$4G", "memballoon.mode=canary", "panic=0",
                                     "virtio_balloon.deflate_on_oom=1", "modprobe.blacklist=virtio_balloon"])
def test_cmdline_that_changes_init_or_the_measurement_is_refused(tmp_path, cmdline):
    line = one_line_error(main("validate", str(with_guest(tmp_path, f"{{name: g, cmdline: '{cmdline}'}}"))))
    assert "guests[0].cmdline" in line


def test_a_hosts_guest_cmdline_has_the_guests_allow_list(tmp_path):
    line = one_line_error(main("validate", str(with_host(tmp_path, "{name: local, guest_cmdline: 'mem=512M'}"))))
    assert "hosts[0].guest_cmdline" in line and "'mem=512M'" in line
    assert main("validate", str(with_host(tmp_path, "{name: local, guest_cmdline: init_on_alloc=0}"))).returncode == 0


def test_harmless_cmdline_passes(tmp_path):
    assert main("validate", str(with_guest(tmp_path, "{name: g, cmdline: 'init_on_alloc=0 nokaslr'}"))).returncode == 0
    assert main("validate", str(with_guest(tmp_path, "{name: g, cmdline: 'systemd.unit=multi-user.target "
                                                     "mitigations=off'}"))).returncode == 0


def test_a_parameter_that_sizes_the_set_aside_is_refused_naming_what_is_allowed(tmp_path):
    line = one_line_error(main("validate", str(with_guest(tmp_path, "{name: g, cmdline: 'dhash_entries=67108864'}"))))
    assert "guests[0].cmdline" in line and "'dhash_entries=67108864'" in line and "allowed: init_on_alloc" in line


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
    line = one_line_error(main("validate", str(with_guest(tmp_path, guest))))
    assert "guests[0].address" in line


@pytest.mark.parametrize("address", ["-oProxyCommand=x", "h:22", "a b"])
def test_bad_host_addresses_are_one_line(tmp_path, address):
    host = f"{{name: h, uri: 'qemu+ssh://root@h.example.org/system', address: '{address}'}}"
    line = one_line_error(main("validate", str(with_host(tmp_path, host))))
    assert "hosts[0].address" in line


def test_only_that_matches_nothing_or_everything_is_refused_before_anything_runs(tmp_path):
    path = write(tmp_path, BASE.replace("{memory: [1 GiB]", "{repeats: 11, memory: [1 GiB]"))
    for pattern in ("", "local/g/m1024-c1024-r", "nothing"):
        line = one_line_error(main("sweep", str(path), "--force", "--only", pattern, "--results", str(tmp_path / "r")))
        assert "--only" in line
    assert not (tmp_path / "r").exists()
    out = main("status", str(path), "--only", "local/g/m1024-c1024-r1", "--results", str(tmp_path / "r"))
    assert out.returncode == 0 and out.stdout.count("missing ") == 1  # r1 only, not r10 and r11
