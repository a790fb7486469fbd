"""audit on real guests: four probe guests kept running under the system libvirtd (memory 1, 4 and 16
GiB with balloon statistics, 2 GiB without, all at currentMemory 1024 MiB), audited over
qemu:///system and over qemu+ssh:// on loopback (the host key verified and pinned). Each guest's
total as audit reads it is what the guest's own console says; the ceiling's share agrees with the
committed records' model; nothing changes unless --enable-stats is given."""
from __future__ import annotations

import json
import re
import secrets
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from generator.domain import kernel_cmdline
from generator.guests import probe
from generator.hypervisors import domain_xml

from .conftest import cli, wait_for
from .test_ssh import libvirtd, sshd, workdir  # noqa: F401 - fixtures

pytestmark = pytest.mark.ssh

SIZES = {"m1": (1024, True), "m4": (4096, True), "m16": (16384, True), "nostats": (2048, False)}


@pytest.fixture(scope="module")
def guests(libvirtd, embed_env, tmp_path_factory):  # noqa: F811
    import libvirt

    folder = Path(tmp_path_factory.mktemp("audit-stage", numbered=True))
    stage = Path("/var/tmp") / f"mbaudit-{secrets.token_hex(4)}"
    stage.mkdir(mode=0o755)
    built = probe.build("host", "", Path(embed_env["MEMBALLOON_CACHE"]), "virtio")
    image, _ = built.boot_image("auto")
    kernel = stage / f"vmlinux-{built.release}"  # audit reads the release from the kernel file's name
    shutil.copy(image, kernel)
    initrd = stage / "initrd.img"
    shutil.copy(built.initrd, initrd)
    for f in (kernel, initrd):
        f.chmod(0o644)
    conn = libvirt.open("qemu:///system")
    run = secrets.token_hex(3)
    doms = {}
    try:
        for key, (memory, stats) in SIZES.items():
            console = stage / f"{key}.log"
            xml = domain_xml(name=f"mbaudit-{run}-{key}", domain_type="qemu", memory_mib=memory, current_memory_mib=1024,
                             vcpus=1, kernel=str(kernel), initrd=str(initrd), console=str(console),
                             cmdline=kernel_cmdline(mode="measure", stable=3, settle=600,
                                                    balloon_kib=(memory - 1024) * 1024,
                                                    extra="init_on_alloc=0 memballoon.hold=3600"),
                             balloon_model="virtio", stats_period=1, memory_backing="memfd")
            if not stats:
                root = ET.fromstring(xml)
                balloon = root.find("./devices/memballoon")
                balloon.remove(balloon.find("stats"))
                xml = ET.tostring(root, encoding="unicode")
            doms[key] = (conn.createXML(xml, 0), console)

        def settled(console: Path) -> int | None:
            m = re.search(r"@@MEMBALLOON settled-memtotal-kib (\d+)", console.read_text(errors="replace")) \
                if console.exists() else None
            return int(m.group(1)) if m else None
        wait_for(lambda: all(settled(c) for _, c in doms.values()), 600, "the guests' balloons to settle")
        time.sleep(3)  # a statistics period or two after settling
        yield {key: {"dom": d, "name": d.name(), "memtotal_kib": settled(c), "memory": SIZES[key][0]}
               for key, (d, c) in doms.items()}, built.release
    finally:
        for d, _ in doms.values():
            try:
                d.destroy()
            except libvirt.libvirtError:
                pass
        conn.close()
        shutil.rmtree(stage, ignore_errors=True)


def state(g) -> tuple:
    import libvirt

    dom = g["dom"]
    return dom.XMLDesc(0), dom.info()[:3], dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)


def rows(out) -> dict:
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["format"] == "memballoon-audit" and doc["version"] == 1
    [host] = doc["hosts"]
    assert host["error"] is None
    return {g["name"]: g for g in host["guests"]}


def test_audit_of_the_system_libvirtd_reads_what_the_guests_see(guests, embed_env):
    found, release = guests
    before = {k: state(g) for k, g in found.items()}
    got = rows(cli(embed_env, "audit", "qemu:///system", "--json", timeout=120))
    for key, g in found.items():
        r = got[g["name"]]
        assert r["memory_mib"] == g["memory"] and r["current_memory_mib"] == 1024
        assert r["kernel"] == release and r["kernel_from"] == "the domain's kernel file"
        if key == "nostats":
            assert r["sees_mib"] is None and r["unknown_why"].startswith("no balloon statistics period")
            continue
        assert abs(r["sees_mib"] - g["memtotal_kib"] / 1024) <= 1, (r, g)  # what the guest itself says
        assert r["lost_mib"] == pytest.approx(1024 - g["memtotal_kib"] / 1024, abs=1)
    # the ceiling's share: the model against these guests' own difference to the 1 GiB guest
    base = got[found["m1"]["name"]]["lost_mib"]
    for key in ("m4", "m16"):
        r = got[found[key]["name"]]
        assert abs(r["ceiling_mib"] - (r["lost_mib"] - base)) <= 8, r
        assert r["give_back_mib"] == r["ceiling_mib"]
    # read-only: every domain's XML and live state as it was
    assert {k: state(g) for k, g in found.items()} == before
    table = cli(embed_env, "audit", "qemu:///system", timeout=120)
    assert table.returncode == 0 and found["m16"]["name"] in table.stdout and "total: " in table.stdout


def test_audit_over_qemu_ssh_with_a_verified_key(guests, sshd, embed_env, tmp_path):  # noqa: F811
    found, _ = guests
    manifest = tmp_path / "hosts" / "experiment.yaml"
    manifest.parent.mkdir()
    shutil.copy(sshd["known_hosts"], manifest.parent / "known_hosts")
    uri = f"qemu+ssh://root@127.0.0.1:{sshd['port']}/system?keyfile={sshd['key']}&no_tty=1"
    manifest.write_text(f"""
experiment: hosts
hosts:
  - name: loop
    uri: '{uri}'
    ssh: {{user: root, port: {sshd['port']}, key: {sshd['key']}, known_hosts: known_hosts}}
guests: [{{name: x}}]
sweep: {{memory: [1 GiB], current_memory: [1 GiB]}}
post: {{slug: hosts, title: hosts}}
""")
    got = rows(cli(embed_env, "audit", "--hosts", str(manifest), "--json", "--trust", str(sshd["dir"]), timeout=120))
    r = got[found["m4"]["name"]]
    assert abs(r["sees_mib"] - found["m4"]["memtotal_kib"] / 1024) <= 1
    # the same URI on the command line: its key is in no known_hosts file, so the host is refused, alone
    out = cli(embed_env, "audit", uri, "qemu:///system", "--trust", str(sshd["dir"]), timeout=120)
    assert out.returncode == 2, out.stderr
    assert "failed: host 127-0-0-1: unknown SSH host key for" in out.stdout, out.stdout
    assert found["m1"]["name"] in out.stdout  # the other host is audited


def test_enable_stats_is_the_one_change_and_it_is_live_only(guests, embed_env):
    import libvirt

    found, _ = guests
    g = found["nostats"]
    got = rows(cli(embed_env, "audit", "qemu:///system", "--json", "--enable-stats", "1", timeout=120))
    r = got[g["name"]]
    assert r["changed"] == "statistics period set to 1 s (live only)"
    assert abs(r["sees_mib"] - g["memtotal_kib"] / 1024) <= 1
    assert "<stats period='1'/>" in g["dom"].XMLDesc(0)
    for key in ("m1", "m4", "m16"):
        assert got[found[key]["name"]]["changed"] == ""  # they had a period: untouched
    assert libvirt  # the module is there for the XML flags above
