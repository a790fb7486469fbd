"""Plugging memory into a running guest (generator/plugging.py) with a fake libvirt domain that answers as
a virtio-mem or DIMM guest does: the libvirt calls made (their XML), what the record keeps, a step
that never finishes, and which points are planned at all. Real guests plug in tests/integration."""
from __future__ import annotations

import re
import threading
import xml.etree.ElementTree as ET

import libvirt
import pytest

from generator import plugging
from generator.errors import ManifestError
from generator.manifest import load
from generator.measure import measure
from generator.plan import points
from generator.pointrun import PointRun
from tests.support.fake_host import M, FakeHost, ScriptedDomain, probe_console

PROBE = {"kernel": "/k", "initrd": "/i", "release": "6.1.0-57-amd64", "boot_method": "pvh"}
FREE0 = 880000  # MemFree after boot (KiB)


class PluggableDomain(ScriptedDomain):
    """A hotplug guest: memory the host plugs shows in MemTotal half a second later (MemFree by less:
    the page descriptors), and goes again when it is unplugged; `deaf` never takes anything in."""

    def __init__(self, xml: str, deaf: bool = False):
        super().__init__(xml, probe_console(1024, 1024), 1024 * 1024, 1024 * 1024, ends=False)
        self.deaf, self.calls_xml = deaf, []
        settled = int(re.search(rf"{M} settled-memtotal-kib (\d+)", "".join(t for _, t in self.script)).group(1))
        last = max(at for at, _ in self.script)
        self.script.append((last + 0.05, f"{M} memtotal-now {settled} {FREE0} 9.0\n"))  # the probe's baseline

    def _report(self, plugged_kib: int) -> None:
        if self.deaf:
            return
        base = int(re.search(rf"{M} settled-memtotal-kib (\d+)", self.console()).group(1))
        total, free = base + plugged_kib, FREE0 + plugged_kib - plugged_kib // 64
        at = self._now() + 0.5
        self.script.append((at, f"{M} memtotal-now {total} {free} {at:.2f}\n"))

    def XMLDesc(self, flags=0):
        return self.xml

    def updateDeviceFlags(self, xml, flags=0):
        self.calls_xml.append(("update", xml, flags))
        self._report(int(ET.fromstring(xml).findtext("target/requested")))

    def attachDeviceFlags(self, xml, flags=0):
        self.calls_xml.append(("attach", xml, flags))
        self.xml = self.xml.replace("</devices>", xml + "</devices>")
        self._report(int(ET.fromstring(xml).findtext("target/size")))

    def detachDeviceFlags(self, xml, flags=0):
        self.calls_xml.append(("detach", xml, flags))
        self._report(0)


@pytest.fixture
def manifest(write_manifest):
    def make(models="[virtio-mem, dimm]", plugged="[1 GiB]"):
        text = write_manifest(memory="[4 GiB]").read_text().replace(
            "  repeats: 1\n", f"  repeats: 1\n  memory_model: {models}\n  plugged: {plugged}\n")
        return load(write_manifest(text=text))
    return make


def measured(m, model: str, deaf: bool = False):
    p = next(x for x in points(m) if x.memory_model == model)
    host = FakeHost(lambda xml: PluggableDomain(xml, deaf))
    record = measure(PointRun(p, m, host, {}, "qemu", "test", "t", threading.Event()), PROBE)
    return record, host.conn.domains[0]


def test_virtio_mem_is_plugged_through_its_requested_size_and_the_record_says_what_the_guest_saw(manifest):
    m = manifest()
    record, dom = measured(m, "virtio-mem")
    assert record["status"] == "ok", record["reason"]
    kinds = [(what, ET.fromstring(xml).findtext("target/requested"), flags) for what, xml, flags in dom.calls_xml]
    assert kinds == [("update", str(1024 * 1024), libvirt.VIR_DOMAIN_AFFECT_LIVE), ("update", "0", 1)]
    plug = record["plug"]
    assert plug["plugged_kib"] == 1024 * 1024 and plug["memtotal_plugged_kib"] - plug["memtotal_before_kib"] == 1024 * 1024
    assert plug["memfree_plugged_kib"] - FREE0 == 1024 * 1024 - 1024 * 1024 // 64   # less: the page descriptors
    assert plug["memtotal_unplugged_kib"] == plug["memtotal_before_kib"] and 0.3 < plug["plug_s"] < 2 and 0.3 < plug["unplug_s"] < 2
    assert "memballoon.hold=240" in dom.xml and "error" not in plug
    assert dom.destroyed   # nothing left running


def test_a_dimm_is_attached_and_the_same_dimm_detached(manifest):
    record, dom = measured(manifest(), "dimm")
    assert record["status"] == "ok" and "unplug_s" in record["plug"]
    (a, attached, _), (d, detached, _) = dom.calls_xml
    assert (a, d) == ("attach", "detach") and ET.fromstring(attached).get("model") == "dimm"
    assert ET.fromstring(detached).findtext("target/size") == str(1024 * 1024)


def test_a_guest_that_never_takes_the_memory_in_is_said_so(manifest, monkeypatch):
    monkeypatch.setattr(plugging, "STEP_LIMIT_S", 1.0)
    record, dom = measured(manifest(), "virtio-mem", deaf=True)
    assert record["status"] == "ok"   # the point itself was measured; the plug is what failed
    assert record["plug"]["error"] == "MemTotal did not take in all of the plugged memory within 1 s"
    assert dom.destroyed


def test_only_points_with_room_and_something_to_plug_into_are_planned(manifest):
    m = manifest(models="[balloon, virtio-mem]", plugged="[0, 1 GiB, 8 GiB]")
    keys = sorted(p.key for p in points(m))
    # a balloon guest boots with all of memory (nothing to plug into); 8 GiB is more than 4 GiB - 1 GiB
    assert keys == ["local/debian/m4096-c1024-r1", "local/debian/m4096-c1024-virtio-mem-p1024-r1",
                    "local/debian/m4096-c1024-virtio-mem-r1"]
    with pytest.raises(ManifestError, match="plugged"):
        manifest(plugged="[1 GiB, 5 MiB]")


def test_hostile_guest_lines_are_not_readings():
    """The probe's reports come from a guest: only whole, bounded numbers in the exact form are read."""
    text = (f"{M} memtotal-now 1000 2000 3.5\n"
            f"{M} memtotal-now 1234567890123456 1 1.0\n"       # 16 digits: not a reading
            f"{M} memtotal-now <b>9</b> 1 1.0\n"
            f"{M} memtotal-now -5 1 1.0\n"
            f"{M} memtotal-now ../../etc 1 1.0\n"
            f"x{M} memtotal-now 7 8 9.0 trailing\n")
    assert plugging.readings(text) == [(1000, 2000, 3.5)]   # and only whole lines


@pytest.mark.parametrize("bad", ["['../x']", "[99999 TiB]", "[-1 GiB]", "['<b>1 GiB</b>']", "[1.5]"])
def test_bad_plugged_sizes_are_refused_by_key(manifest, bad):
    with pytest.raises(ManifestError, match=r"sweep\.plugged"):
        manifest(plugged=bad)
