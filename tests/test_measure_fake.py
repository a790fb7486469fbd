"""measure() driven by a fake host and libvirt (tests/fake_host.py): the polling loop, the readings
and their itemization, a death, a refusal, a guest that never reports, and Ctrl-C, in about a second
each and without booting anything."""
from __future__ import annotations

import threading

import libvirt
import pytest

from generator import results
from generator.errors import StopRequested
from generator.manifest import load
from generator.measure import measure
from generator.plan import points

from fake_host import FakeHost, ScriptedDomain, probe_console


@pytest.fixture
def manifest(write_manifest):
    path = write_manifest(memory="[1 GiB, 4 GiB, 16 GiB]")
    path.write_text(path.read_text().replace("  boot: 120s\n", "  boot: 2s\n"))
    return load(path)


def point(manifest, memory):
    return next(p for p in points(manifest) if p.memory_mib == memory)


def run(manifest, memory, make, stop=None):
    host = FakeHost(make)
    rec = measure(point(manifest, memory), manifest=manifest, host=host, host_facts={}, kernel="/k", initrd="/i",
                  guest_release="6.1.0-57-amd64", domain_type="qemu", domain_type_reason="test", run_id="t",
                  stop=stop or threading.Event(), boot_method="pvh")
    return rec, host


def test_a_point_that_settles_gives_a_record_with_its_set_aside_itemized(manifest):
    rec, host = run(manifest, 4096, lambda xml: ScriptedDomain(xml, probe_console(4096, 1024), 4096 * 1024,
                                                                  1024 * 1024))
    assert rec["status"] == "ok", rec["reason"]
    assert rec["memtotal_boot_kib"] == 4009396 and rec["memtotal_settled_kib"] == 4009396 - 3072 * 1024
    items = rec["set_aside_kib"]
    assert sum(items.values()) == 4096 * 1024 - 4009396 and abs(items["unexplained"]) < 1024
    assert items["bounce buffer"] >= 65536 and rec["zone_reserves"]["zones"]["Normal"]["min"] > 0
    assert rec["balloon_timeline"] and rec["host_view"]["max_memory_kib"] == 4096 * 1024
    assert "memblock=debug" in host.conn.domains[0].xml  # what made the itemization possible
    assert host.conn.domains[0].destroyed and host.removed  # nothing left running, the console removed
    kept = results.checked(dict(rec, schema_version=results.SCHEMA_VERSION))  # one its reader accepts
    assert kept["status"] == "ok", kept["reason"]


def test_a_guest_that_dies_is_recorded_as_oom_with_its_set_aside(manifest):
    rec, _ = run(manifest, 16384, lambda xml: ScriptedDomain(xml, probe_console(16384, 1024, dies=True),
                                                               16384 * 1024, 1024 * 1024))
    assert rec["status"] == "oom" and "usleep" in rec["reason"]
    assert rec["memtotal_boot_kib"] == 16377256 and rec["set_aside_kib"]["page descriptors"] > 260000


def test_a_refused_domain_is_a_result(manifest):
    def refuse(xml):
        raise libvirt.libvirtError("cannot set up guest memory 'pc.ram': Cannot allocate memory")
    rec, _ = run(manifest, 16384, refuse)
    assert rec["status"] == "refused" and "Cannot allocate memory" in rec["reason"]


def test_a_guest_that_never_reports_times_out_and_is_destroyed(manifest):
    rec, host = run(manifest, 1024, lambda xml: ScriptedDomain(xml, [(99.0, "never")], 1024 * 1024, 1024 * 1024,
                                                                 ends=False))
    assert rec["status"] == "timeout" and "boot timeout (2 s)" in rec["reason"]
    assert host.conn.domains[0].destroyed


def test_ctrl_c_stops_the_point_and_destroys_the_domain(manifest):
    stop = threading.Event()
    stop.set()
    with pytest.raises(StopRequested):
        run(manifest, 1024, lambda xml: ScriptedDomain(xml, probe_console(1024, 1024), 1024 * 1024, 1024 * 1024),
            stop=stop)
