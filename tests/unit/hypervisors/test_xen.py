"""Xen as a hypervisor (generator/hypervisors/xen.py): the PV domain, its balloon readings, and the
factors it refuses."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from generator.domain import kernel_cmdline
from generator.errors import ManifestError
from generator.guests.console import Console
from generator.hypervisors import domain_xml
from generator.manifest import load
from generator.readings import fill_guest_view as _fill_guest_view
from tests.support.manifests import XEN_HOST, manifest_with  # noqa: F401


@pytest.mark.parametrize("sweep_extra, key", [
    ("  memory_model: [balloon, virtio-mem]\n", "sweep.memory_model"),
    ("  autodeflate: [true]\n", "sweep.autodeflate"),
])
def test_qemu_only_factors_are_refused_for_xen_hosts(write_manifest, sweep_extra, key):
    path = manifest_with(write_manifest, XEN_HOST.format(nested="{}"))
    path.write_text(path.read_text().replace("  repeats: 1\n", "  repeats: 1\n" + sweep_extra))
    with pytest.raises(ManifestError) as e:
        load(path)
    assert key in str(e.value)


def test_virtio_balloon_with_a_xen_host_is_refused(write_manifest):
    with pytest.raises(ManifestError) as e:
        load(manifest_with(write_manifest, XEN_HOST.format(nested="{}"), balloon="virtio"))
    assert "run Xen" in str(e.value)


def test_pv_domain_xml():
    cmdline = kernel_cmdline(mode="measure", stable=3, settle=60, balloon_kib=0, console="hvc0")
    xml = domain_xml(name="mb-x-<&>", domain_type="xen", memory_mib=8192, current_memory_mib=1024, vcpus=1,
                     kernel="/k", initrd="/i", cmdline=cmdline, console="/ignored", balloon_model="xen",
                     stats_period=1, memory_backing="memfd")
    dom = ET.fromstring(xml)
    assert dom.get("type") == "xen" and dom.findtext("name") == "mb-x-<&>"
    assert dom.find("os/type").get("machine") == "xenpv" and dom.findtext("os/type") == "linux"
    assert dom.findtext("memory") == str(8192 * 1024) and dom.findtext("currentMemory") == str(1024 * 1024)
    assert dom.find("devices/console/target").get("type") == "xen"
    assert dom.find("devices/memballoon").get("model") == "xen"
    assert dom.find("memoryBacking") is None and dom.find("devices/serial") is None  # QEMU's, not Xen's
    assert "console=hvc0" in dom.findtext("os/cmdline")


def test_xen_balloon_section_is_read_and_hostile_lines_dropped():
    text = "\n".join(["@@MEMBALLOON init 1.0", "@@MEMBALLOON settled-memtotal-kib 825912",
                      "@@MEMBALLOON begin xen-balloon", "target_kb 1048576", "info/current_kb 1048576",
                      "info/low_kb 7340032", "info/high_kb 0", "evil_key; rm -rf / 5", "target_kb nan",
                      "@@MEMBALLOON end xen-balloon"])
    record = {"durations": {}}
    _fill_guest_view(record, Console.parse(text), 1.0)
    assert record["xen_balloon"] == {"target_kb": 1048576, "current_kb": 1048576, "low_kb": 7340032, "high_kb": 0}
