"""Factors (generator/manifest.py FACTORS): a new factor reaches keys, paths, records, the domain and
the post, and never makes an archived record unreadable."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from generator import manifest as manifest_mod
from generator import results
from generator.hypervisors import domain_xml
from generator.manifest import Factor, load
from generator.plan import Point, points
from generator.publish.build import build_all
from tests.support import ROOT  # noqa: F401
from tests.support.sample import MANIFEST, new_site, record  # noqa: F401


@pytest.fixture
def hugepages():
    """One more factor, declared the way the built-in ones are; removed again after the test."""
    before = list(manifest_mod.FACTORS)
    manifest_mod.add_factor(Factor(
        name="hugepages", convert=manifest_mod._values(manifest_mod._flag), kind=bool, default=False,
        words={True: "hugepages", False: "no-hugepages"}, labels={True: "hugepages", False: "no hugepages"},
        doc="back guest RAM with huge pages"))
    yield
    manifest_mod.FACTORS[:] = before
    manifest_mod.Sweep = manifest_mod.sweep_schema(before)


def xml_of(**kw) -> ET.Element:
    args = dict(name="x", domain_type="qemu", memory_mib=16384, current_memory_mib=1024, vcpus=1, kernel="/k",
                initrd="/i", cmdline="c", console="/c", balloon_model="virtio", stats_period=1)
    args.update(kw)
    return ET.fromstring(domain_xml(**args))


def test_a_new_factor_keeps_every_committed_record_readable(hugepages):
    """The archive outlives the code: with one more factor declared, every committed record of every
    experiment still reads, belongs to its point, and carries the new factor's default."""
    from generator.plan import results_dir

    read = 0
    for path in sorted((ROOT / "experiments").glob("*/experiment.yaml")):
        m = load(path)
        for p in points(m):
            found = results.read_point(p, results_dir(m))
            if found:
                assert found[0]["hugepages"] is False
                read += 1
    committed = len(list((ROOT / "experiments").glob("*/results/**/*.json")))
    assert read == committed and committed >= 200


def test_a_new_factor_reaches_keys_paths_records_and_the_post(hugepages, tmp_path):
    folder = tmp_path / "sample"
    folder.mkdir()
    (folder / "post.md").write_text('{% import "macros.md.j2" as m %}{{ m.results_table(data) }}\n'
                                    '{% for f in figures.values() %}{{ m.figure(f) }}\n\n{% endfor %}')
    (folder / "experiment.yaml").write_text(MANIFEST.format(slug="sample", title="t", content="post.md").replace(
        "repeats: 2}", "repeats: 1, hugepages: [false, true]}"))
    m = load(folder / "experiment.yaml")
    pts = points(m)
    assert len(pts) == 2 * 5 * 2  # guests x memory x hugepages
    on = next(p for p in pts if p.hugepages and p.memory_mib == 4096 and p.guest == "rhel6")
    off = next(p for p in pts if not p.hugepages and p.memory_mib == 4096 and p.guest == "rhel6")
    assert on.key == "kvm1/rhel6/m4096-c1024-hugepages-r1" and off.key == "kvm1/rhel6/m4096-c1024-r1"
    assert on.record_path("R") == Path("R/kvm1/rhel6/memory-4096MiB-current-1024MiB-hugepages-r1.json")
    assert off.record_path("R") == Path("R/kvm1/rhel6/memory-4096MiB-current-1024MiB-r1.json")  # unchanged
    for p in pts:
        if p.memory_mib == 32768:
            continue
        rec = {**record(p.guest, p.memory_mib, 1), **p.factors, "repeat": 1}
        if p.hugepages:
            rec["free_m"] = dict(rec["free_m"], total=rec["free_m"]["total"] + 7)
            rec["memtotal_settled_kib"] += 7 * 1024  # the guest's two readings agree
        results.write_record(p.record_path(Path(m.results)), rec)
    back = results.existing(on, Path(m.results))
    assert back["hugepages"] is True
    site = new_site(tmp_path)
    build_all([m], site=site, quiet=True)
    page = (site / "content/posts/sample/index.md").read_text()
    assert "| kvm1 | KVM | Ubuntu Precise, hugepages | 4 GiB | 1024 MiB | 850 |" in page  # its own rows
    assert "| kvm1 | KVM | Ubuntu Precise | 4 GiB | 1024 MiB | 843 |" in page
    assert (site / "content/posts/sample/kvm-precise-1024-hugepages.png").exists()
    assert (site / "content/posts/sample/kvm-precise-1024.png").exists()


def test_every_committed_record_reads_through_the_migration():
    paths = sorted((ROOT / "experiments").glob("*/results/**/*.json"))
    assert len(paths) >= 36
    versions = set()
    for path in paths:
        versions.add(json.loads(path.read_text())["schema_version"])
        r = results.read_record(path)
        assert r["schema_version"] == results.SCHEMA_VERSION
        for f in manifest_mod.FACTORS:
            assert f.name in r, (path, f.name)
        assert r["memory_model"] in ("balloon", "virtio-mem", "dimm")
    assert versions <= {1, 2, 3}


def test_version_1_records_get_the_defaults():
    old = {"experiment": "e", "host": "h", "guest": "g", "memory_mib": 1024, "current_memory_mib": 1024, "repeat": 1,
           "status": "ok", "reason": "", "schema_version": 1, "memtotal_settled_kib": 921600, "free_m": {"total": 900}}
    r = results.parse_record(json.dumps(old), Path("old.json"))
    assert (r["memory_model"], r["autodeflate"], r["free_page_reporting"], r["schema_version"]) == \
        ("balloon", False, False, results.SCHEMA_VERSION)


def test_points_are_made_from_the_factors():
    p = Point.make("h", "g", 2, memory_mib=4096, current_memory_mib=1024, memory_model="virtio-mem")
    assert p.key == "h/g/m4096-c1024-virtio-mem-r2" and p.memory_mib == 4096 and p.autodeflate is False
    with pytest.raises(TypeError, match="needs memory_mib"):
        Point.make("h", "g", current_memory_mib=1)


def test_domain_xml_for_each_memory_model():
    balloon = xml_of()
    assert balloon.findtext("memory") == str(16384 * 1024) and balloon.find("maxMemory") is None
    vmem = xml_of(memory_model="virtio-mem")
    assert vmem.findtext("memory") == str(1024 * 1024) and vmem.find("maxMemory").text == str(16384 * 1024)
    assert vmem.find("cpu/numa/cell").get("memory") == str(1024 * 1024)
    target = vmem.find("devices/memory[@model='virtio-mem']/target")
    assert target.findtext("size") == str(15360 * 1024) and target.findtext("requested") == "0"
    dimm = xml_of(memory_model="dimm")
    assert dimm.find("maxMemory").get("slots") == "16" and dimm.find("devices/memory") is None
    opts = xml_of(autodeflate=True, free_page_reporting=True).find("devices/memballoon")
    assert opts.get("autodeflate") == "on" and opts.get("freePageReporting") == "on"
    memfd = xml_of(memory_backing="memfd").find("memoryBacking")
    assert memfd.find("source").get("type") == "memfd" and memfd.find("access").get("mode") == "shared"
    evil = xml_of(name="a'<b>&\"", cmdline="x</cmdline><kernel>/etc/shadow")
    assert evil.findtext("name") == "a'<b>&\"" and evil.findtext("os/kernel") == "/k"
