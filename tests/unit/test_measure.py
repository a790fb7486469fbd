"""Measuring one point (generator/measure.py) with a fake host and libvirt (tests/support/fake_host.py):
the polling loop, a death, a refusal, a guest that never reports, Ctrl-C, in about a second each and
without booting anything; how deaths are classified and what a record keeps of hostile guest text."""
from __future__ import annotations

import threading
import time

import libvirt
import pytest

from generator import results
from generator.errors import StopRequested
from generator.guests.console import Console
from generator.guests.probe import MARK
from generator.manifest import load
from generator.measure import measure
from generator.pointrun import PointRun
from generator.readings import classify_death as _classify_death
from generator.plan import points
from tests.support.fake_host import FakeHost, ScriptedDomain, probe_console
from tests.support.records import rec  # noqa: F401
from tests.support.sample import record  # noqa: F401


@pytest.fixture
def manifest(write_manifest):
    path = write_manifest(memory="[1 GiB, 4 GiB, 16 GiB]")
    path.write_text(path.read_text().replace("  boot: 120s\n", "  boot: 2s\n"))
    return load(path)


PROBE = {"kernel": "/k", "initrd": "/i", "release": "6.1.0-57-amd64", "boot_method": "pvh"}


def point(manifest, memory):
    return next(p for p in points(manifest) if p.memory_mib == memory)


def run(manifest, memory, make, stop=None):
    host = FakeHost(make)
    rec = measure(PointRun(point(manifest, memory), manifest, host, {}, "qemu", "test", "t", stop or threading.Event()),
                  PROBE)
    return rec, host


def test_a_point_that_settles_gives_a_record_with_its_set_aside_itemized(manifest):
    rec, host = run(manifest, 4096, lambda xml: ScriptedDomain(xml, probe_console(4096, 1024), 4096 * 1024,
                                                                  1024 * 1024, ends=False))  # up until destroyed
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


def test_a_hosts_guest_parameters_reach_the_kernel_and_the_record(manifest):
    """hosts[].guest_cmdline (the nested KVM host's init_on_alloc=0): on the guest's command line after its own,
    and named by the record, so a reader knows those guests booted differently."""
    import dataclasses

    host = FakeHost(lambda xml: ScriptedDomain(xml, probe_console(4096, 1024), 4096 * 1024, 1024 * 1024, ends=False))
    host.spec = dataclasses.replace(host.spec, guest_cmdline="init_on_alloc=0")
    rec = measure(PointRun(point(manifest, 4096), manifest, host, {}, "qemu", "test", "t", threading.Event()), PROBE)
    assert rec["status"] == "ok" and rec["kernel_parameters"] == "init_on_alloc=0"
    assert "init_on_alloc=0" in host.conn.domains[0].xml
    assert "kernel_parameters" not in run(manifest, 4096, lambda xml: ScriptedDomain(
        xml, probe_console(4096, 1024), 4096 * 1024, 1024 * 1024, ends=False))[0]


class LaggingStats(ScriptedDomain):
    """A guest whose balloon statistics arrive late, as a busy TCG guest's can: for a second after it
    settled, the host still holds statistics sent before the balloon's last step (an older `available`,
    an older `last_update`)."""

    def memoryStats(self):
        stats = super().memoryStats()
        settled_at = next((at for at, text in self.script if "settled-memtotal-kib" in text), None)
        if settled_at is not None and self._now() < settled_at + 1.5:
            return dict(stats, available=stats["available"] + 80000, last_update=int(time.time()) - 2)
        return stats


def test_the_last_sample_waits_for_statistics_sent_after_the_balloon_arrived(manifest):
    rec, _ = run(manifest, 4096, lambda xml: LaggingStats(xml, probe_console(4096, 1024), 4096 * 1024, 1024 * 1024,
                                                          ends=False))
    assert rec["status"] == "ok", rec["reason"]
    assert rec["balloon"]["actual"] == 1024 * 1024
    assert rec["balloon"]["available"] == 1024 * 1024 - 40000  # the fresh figure, not the stale one


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


@pytest.mark.parametrize("console,status,fragment", [
    ("[ 5.1] Out of memory: Killed process 1 (sh) total-vm:1kB\n[ 5.2] Kernel panic - not syncing: Attempted to kill init!",
     "oom", "Out of memory: Killed process 1 (sh)"),
    ("[ 25.7] Kernel panic - not syncing: System is deadlocked on memory\n", "oom",
     "Kernel panic - not syncing: System is deadlocked on memory"),
    ("[ 1.0] Kernel panic - not syncing: VFS: Unable to mount root fs", "panic",
     "Kernel panic - not syncing: VFS: Unable to mount root fs"),
    (f"{MARK} init 1\n{MARK} balloon-loaded 2\n", "error", "after the balloon driver loaded"),
])
def test_guest_deaths_are_classified(console, status, fragment):
    record = {}
    _classify_death(record, Console.parse(console))
    assert record["status"] == status and fragment in record["reason"]


def test_timeline_facts_from_a_record_and_from_nonsense():
    """How far a balloon got and how long it moved, from the timeline a record (or a guest) wrote."""
    from generator.publish.series import SeriesPoint, timeline_facts
    rec = {"balloon_timeline": [[0.5, 4194304, None], [1.5, 4194304, None], [2.5, 3000000, 5], [3.5, 1048576, 5],
                                [4.5, 1048576, 5]]}
    assert timeline_facts(rec) == {"balloon_low_kib": 1048576, "balloon_moving_s": 1.0}
    hostile = {"balloon_timeline": [["x", 5, 1], [1.0, "1024", 1], [2.0, True, 1], [3.0, -4, 1], [4.0, None, 1], [5.0]]}
    assert timeline_facts(hostile) == {"balloon_low_kib": None, "balloon_moving_s": None}
    assert timeline_facts({}) == {"balloon_low_kib": None, "balloon_moving_s": None}
    # a point read from full records (no build summary) and from summaries gives the same floor
    died = dict(rec, status="oom", memory_mib=4096)
    assert SeriesPoint(4096, [died]).balloon_floor == SeriesPoint(4096, [dict(died, **timeline_facts(died))]).balloon_floor == 1024


def test_stored_console_text_has_no_control_characters():
    """What measure keeps of a console (excerpt, reasons, OOM names, dmesg, the kernel release) holds no
    control characters, and numbers a guest prints are read only when they are readings."""
    from generator.guests import system
    from generator.guests.console import Console, excerpt, one_line
    from generator.readings import classify_death as _classify_death, fill_guest_view as _fill_guest_view

    console = ("@@MEMBALLOON init 1.0\n@@MEMBALLOON kernel 6.1.0-amd64 {{< youtube x >}} $5\n"
               "[ 2.0] Out of memory: Killed process 7 (ev\x1b[2Jil)\n"
               "[ 3.0] Kernel panic - not syncing: \x1b]52;c;eA==\x07 System is deadlocked on memory\r\n"
               "\x1b[31mred\x1b[0m line\twith tab\n")
    record = {"durations": {}, "guest_kernel": "from-the-image"}
    c = Console.parse(console)
    _fill_guest_view(record, c, 1.0)
    assert record["guest_kernel"] == "from-the-image"  # not a release: the agent's check applies to the console
    _fill_guest_view(record, Console.parse("@@MEMBALLOON kernel 6.1.0\x1b]0;x\x07-amd64\n"), 1.0)
    assert record["guest_kernel"] == "6.1.0-amd64"
    _classify_death(record, c)
    lines = excerpt(console) + [record["reason"], one_line("\x1b[2Jqemu-system-x86_64: \x07bad")]
    lines += system.oom_kills(console)
    for line in lines:
        assert not any(ord(ch) < 32 or 0x7f <= ord(ch) <= 0x9f for ch in line), repr(line)
    assert "red line with tab" in lines and system.oom_kills(console) == ["evil"]
    assert record["status"] == "oom" and "System is deadlocked on memory" in record["reason"]


def test_guest_numbers_are_bounded_before_they_are_parsed():
    from generator.guests import system
    from generator.guests.console import Console, parse_free, parse_meminfo
    from generator.readings import fill_guest_view as _fill_guest_view

    huge = "9" * 4000
    assert parse_free(f"  total used\nMem: {huge} 5\n") is None
    assert parse_free("  total used\nMem: ١٢٣ 5\n") is None  # digits of another script are not a reading
    assert parse_free("  total used\nMem: 843 206\n") == {"total": 843, "used": 206}
    info = parse_meminfo(f"MemTotal: {huge} kB\nMemFree: 1e400 kB\nCached: 12 kB\n" +
                         "".join(f"K{i}: 1 kB\n" for i in range(1000)))
    assert "MemTotal" not in info and info["Cached"] == 12 and len(info) == 200
    assert system.parse_memtotal(f"MemTotal: {huge} kB\n") is None
    text = (f"@@MEMBALLOON init 1.5e308\n@@MEMBALLOON settled-memtotal-kib {huge}\n@@MEMBALLOON boot-memtotal-kib nan\n"
            "@@MEMBALLOON settled 1_000\n@@MEMBALLOON begin xen-balloon\ninfo/current_kb ²\ntarget_kb 12\n"
            f"low_kb {huge}\n@@MEMBALLOON end xen-balloon\n")
    record = {"durations": {}}
    _fill_guest_view(record, Console.parse(text), None)  # no traceback: '²'.isdigit() is True, int('²') fails
    assert record["memtotal_settled_kib"] is None and record["memtotal_boot_kib"] is None
    assert record["xen_balloon"] == {"target_kb": 12} and "guest_boot_s" not in record["durations"]
