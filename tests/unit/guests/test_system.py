"""Full-system guests (generator/guests/system.py): manifests, domains, images and agent answers."""
from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET

import pytest

from generator.errors import ManifestError
from generator.guests import system
from generator.hypervisors import domain_xml
from generator.manifest import load
from generator.plan import points


def with_guests(write_manifest, guests: str, hosts_extra: str = ""):
    text = write_manifest("s").read_text()
    head, rest = text.split("guests:", 1)
    tail = rest.split("sweep:", 1)[1]
    return write_manifest("s", text=head.replace("    domain_type: qemu\n", "    domain_type: qemu\n" + hosts_extra)
                          + "guests:\n" + guests + "sweep:" + tail)


def test_system_guest_and_host_pairing(write_manifest, tmp_path):
    image = tmp_path / "s" / "disk.qcow2"
    image.parent.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    m = load(with_guests(write_manifest, f"  - {{name: probe}}\n  - {{name: sys, image: debian:bookworm, hosts: [local]}}\n"
                                         f"  - {{name: mine, image: {image}}}\n"))
    assert [g.is_system for g in m.guests] == [False, True, True]
    assert m.guest("mine").image == str(image) and m.guest("mine").image_format() == "qcow2"
    assert {p.guest for p in points(m)} == {"probe", "sys", "mine"}


@pytest.mark.parametrize("guests, message", [
    ("  - {name: sys, image: no/such/disk.img}\n", "no such disk image file"),
    ("  - {name: sys, image: /etc/hostname}\n", "outside the project folder"),
    ("  - {name: sys, image: 'debian:'}\n", "guests[0].image"),
    ("  - {name: sys, image: debian:bookworm, hosts: [elsewhere]}\n", "'elsewhere' is not a host"),
    ("  - {name: sys, initrd: x}\n", "guests[0].initrd: goes with image"),
    ("  - {name: sys, initrd: /boot/x}\n", "guests[0].initrd: '/boot/x' resolves to /boot/x, outside the project"),
    ("  - {name: sys, reading: console}\n", "guests[0].reading: is for full systems"),
    ("  - {name: sys, image: debian:bookworm, reading: telnet}\n", "guests[0].reading"),
    ("  - {name: sys, image: debian:bookworm, reading: ssh}\n", "guests[0].address: reading: ssh needs"),
    ("  - {name: sys, image: debian:bookworm, address: 10.0.0.5}\n", "guests[0].address: goes with reading: ssh"),
    ("  - {name: sys, image: debian:bookworm, reading: ssh, address: 'a b'}\n", "guests[0].address"),
    ("  - {name: sys, image: debian:bookworm, reading: ssh, address: 'h:99999'}\n", "guests[0].address"),
])
def test_bad_system_guests_name_the_key(write_manifest, guests, message):
    with pytest.raises(ManifestError) as e:
        load(with_guests(write_manifest, guests))
    assert message in str(e.value)


def test_a_guest_limited_to_one_host_is_planned_only_there(write_manifest):
    path = with_guests(write_manifest, "  - {name: a}\n  - {name: b, hosts: [other]}\n")
    path.write_text(path.read_text().replace("hosts:\n", "hosts:\n  - {name: other, uri: 'qemu+ssh://root@h.example.org/system'}\n", 1))
    m = load(path)
    assert {(p.host, p.guest) for p in points(m)} == {("local", "a"), ("other", "a"), ("other", "b")}


def test_full_system_domain_has_overlay_agent_and_balloon():
    xml = domain_xml(name="mb-s", domain_type="qemu", memory_mib=4096, current_memory_mib=1024, vcpus=1,
                     kernel="", initrd="", cmdline="", console="/c.log", balloon_model="virtio", stats_period=1,
                     disk="/w/overlays/mb-s.qcow2", agent=True)
    dom = ET.fromstring(xml)
    assert dom.find("os/boot").get("dev") == "hd" and dom.find("os/kernel") is None  # the image's boot loader
    disk = dom.find("devices/disk")
    assert disk.find("source").get("file") == "/w/overlays/mb-s.qcow2" and disk.find("driver").get("type") == "qcow2"
    assert dom.find("devices/channel/target").get("name") == "org.qemu.guest_agent.0"
    assert dom.find("devices/memballoon").get("model") == "virtio"


def test_oom_kills_and_what_counts_as_losing_the_system():
    console = ("[ 1.0] Out of memory: Killed process 312 (apt-check) total-vm:1kB\n"
               "[ 2.0] Out of memory: Killed process 1 (systemd) total-vm:1kB\n"
               "[ 3.0] Out of memory: Killed process 9 (" + "x" * 200 + ")\n")
    assert system.oom_kills(console) == ["apt-check", "systemd"]  # a 200-character name is not one
    assert "systemd" in system.ESSENTIAL and "apt-check" not in system.ESSENTIAL


def test_parse_memtotal():
    assert system.parse_memtotal("MemFree: 5 kB\nMemTotal:   863660 kB\n") == 863660
    assert system.parse_memtotal("garbage") is None


def test_console_variant_of_the_debian_image_has_the_report_and_no_agent():
    agent, console = system.debian_recipe("bookworm"), system.debian_recipe("bookworm", "console")
    assert "qemu-guest-agent" in agent.packages and "qemu-guest-agent" not in console.packages
    assert agent.name != console.name and agent.digest() != console.digest()
    files = dict((path, text) for path, _mode, text in console.files)
    assert "@@MEMBALLOON" in files["/usr/local/sbin/memballoon-report"]
    assert "memballoon-report.service" in console.commands


def test_the_report_script_speaks_the_probes_markers():
    """What guest/memballoon-report prints is read by the same parser as the probe's console."""
    from generator.guests.console import Console
    from generator.readings import fill_guest_view as _fill_guest_view

    script = (system.GUEST_FILES / "memballoon-report").read_text()
    for marker in ("report-start", "kernel", "settled-memtotal-kib", "begin free", "end free", "begin meminfo",
                   "end meminfo", "done"):
        assert f'say "{marker}' in script
    text = ("@@MEMBALLOON report-start 37.5\n@@MEMBALLOON kernel 6.1.0-50-amd64\n@@MEMBALLOON settled-memtotal-kib 863660\n"
            "@@MEMBALLOON begin free\n               total        used        free      shared  buff/cache   available\n"
            "Mem:             843         206         727           0          54         636\n@@MEMBALLOON end free\n"
            "@@MEMBALLOON begin meminfo\nMemTotal:         863660 kB\n@@MEMBALLOON end meminfo\n@@MEMBALLOON done 52.0\n")
    record = {"durations": {}}
    _fill_guest_view(record, Console.parse(text), 40.0)
    assert record["memtotal_settled_kib"] == 863660 and record["free_m"]["total"] == 843
    assert record["meminfo"]["MemTotal"] == 863660 and record["guest_kernel"] == "6.1.0-50-amd64"


def test_ssh_guest_domain_forwards_one_loopback_port():
    xml = domain_xml(name="mb-s", domain_type="qemu", memory_mib=2048, current_memory_mib=1024, vcpus=1,
                     kernel="/k", initrd="/i", cmdline="root=/dev/vda", console="/c.log", balloon_model="virtio",
                     stats_period=1, disk="/o.qcow2", forward_port=40123)
    dom = ET.fromstring(xml)
    ns = "{http://libvirt.org/schemas/domain/qemu/1.0}"
    args = [a.get("value") for a in dom.find(f"{ns}commandline")]
    assert "user,id=mbnet,hostfwd=tcp:127.0.0.1:40123-:22" in args  # loopback only
    assert dom.find("devices/channel") is None  # no agent channel asked for


def test_ssh_variant_of_the_debian_image():
    recipe = system.debian_recipe("bookworm", "ssh")
    assert "openssh-server" in recipe.packages and "qemu-guest-agent" not in recipe.packages
    assert "client_key" in recipe.commands and "PasswordAuthentication no" in dict(
        (p, t) for p, _m, t in recipe.files)["/etc/ssh/sshd_config.d/memballoon.conf"]


def test_forwarded_address_needs_the_tools_own_image(write_manifest, tmp_path):
    image = tmp_path / "s" / "mine.img"
    image.parent.mkdir()
    image.write_bytes(b"\0" * 512)
    with pytest.raises(ManifestError) as e:
        load(with_guests(write_manifest, f"  - {{name: s, image: {image}, reading: ssh, address: forwarded}}\n"))
    assert "'forwarded' works with image: debian:<suite>" in str(e.value)
    m = load(with_guests(write_manifest, f"  - {{name: s, image: {image}, reading: ssh, address: 'web01:2222', "
                                         "ssh: {user: admin}}\n"))
    assert m.guest("s").address == "web01:2222" and m.guest("s").ssh.user == "admin"


def test_forwarded_address_only_on_local_hosts(write_manifest):
    path = with_guests(write_manifest, "  - {name: s, image: debian:bookworm, reading: ssh, address: forwarded}\n")
    path.write_text(path.read_text().replace("hosts:\n", "hosts:\n  - {name: far, uri: 'qemu+ssh://root@h.example.org/system'}\n", 1))
    with pytest.raises(ManifestError) as e:
        load(path)
    assert "guests[0].address: 'forwarded' is a port of this machine" in str(e.value)
    path.write_text(path.read_text().replace("address: forwarded}", "address: forwarded, hosts: [local]}"))
    assert load(path).guest("s").hosts == ["local"]


@pytest.mark.parametrize("answers, message", [
    (['not json'], "unexpected answer"),
    (['{"return": {"pid": "7"}}'], "returned no pid"),
    (['{"return": {"pid": 7}}', '{"return": {"exited": true, "exitcode": 3}}'], "exited 3"),
    (['{"return": {"pid": 7}}', '{"return": {"exited": true, "exitcode": 0, "out-data": ' + '"' + "A" * (2 << 20) + '"}}'],
     "larger than"),
    (['{"return": {"pid": 7}}', '{"return": {"exited": true, "exitcode": 0, "out-data": 5}}'], "output missing"),
])
def test_hostile_agent_answers_are_errors_not_data(monkeypatch, answers, message):
    """A guest's agent says what it likes: nonsense, a wrong type, a failed command, a flood."""
    import libvirt_qemu

    replies = iter(answers)
    monkeypatch.setattr(libvirt_qemu, "qemuAgentCommand", lambda _dom, _cmd, _timeout, _flags: next(replies))
    with pytest.raises(system.ReadError, match=message):
        system.agent_exec(object(), "/usr/bin/free", ["-m"])


def test_agent_output_is_decoded_not_trusted(monkeypatch):
    import base64

    import libvirt_qemu

    text = "Mem: <script>alert(1)</script>\udcff".encode("utf-8", "surrogateescape")
    replies = iter(['{"return": {"pid": 7}}', '{"return": {"exited": true, "exitcode": 0, "out-data": "'
                    + base64.b64encode(text).decode() + '"}}'])
    monkeypatch.setattr(libvirt_qemu, "qemuAgentCommand", lambda *_a: next(replies))
    out = system.agent_exec(object(), "/usr/bin/free", ["-m"])
    assert "<script>" in out and "\ufffd" in out  # invalid UTF-8 replaced; markup is escaped where it is shown
