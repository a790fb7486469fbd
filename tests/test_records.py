import json
import os

import pytest

from generator import results
from generator.errors import UserError
from generator.manifest import load
from generator.measure import Console, _classify_death, parse_free, parse_meminfo
from generator.plan import check_only, Point, points, select
from generator.guests.probe import MARK

FREE = """              total        used        free      shared  buff/cache   available
Mem:            843          26         806           2          11         741
Swap:             0           0           0"""


def test_plan_cross_product_and_order(write_manifest):
    m = load(write_manifest(memory="[4 GiB, 1 GiB, 512 MiB]", extra=""))
    pts = points(m)
    # 512 MiB < currentMemory 1024 MiB is left out; smallest memory first
    assert [(p.memory_mib, p.current_memory_mib) for p in pts] == [(1024, 1024), (4096, 1024)]
    assert pts[0].key == "local/debian/m1024-c1024-r1"
    path = pts[1].record_path("R")
    assert str(path) == "R/local/debian/memory-4096MiB-current-1024MiB-r1.json"
    assert select(pts, ["*m4096*"]) == [pts[1]]
    with pytest.raises(UserError, match="matches no point"):
        check_only(["nothing"], [pts])


def test_only_globs_match_whole_keys(write_manifest):
    text = write_manifest().read_text().replace("repeats: 1", "repeats: 12")
    pts = points(load(write_manifest(text=text)))
    r1 = [p.key for p in select(pts, ["local/debian/m1024-c1024-r1"])]
    assert r1 == ["local/debian/m1024-c1024-r1"]  # not r10, r11, r12
    assert len(select(pts, ["m1024-c1024-r1*"])) == 4  # r1, r10, r11, r12 when asked for
    assert {p.memory_mib for p in select(pts, ["*/m2048-*"])} == {2048}
    for bad in ("", "  ", "debian", "m1024"):  # empty, or a substring that used to select points
        with pytest.raises(UserError, match="--only"):
            check_only([bad], [pts])


def test_repeats_cover_the_range_first(write_manifest):
    text = write_manifest().read_text().replace("repeats: 1", "repeats: 2")
    m = load(write_manifest(text=text))
    assert [(p.memory_mib, p.repeat) for p in points(m)] == [(1024, 1), (2048, 1), (1024, 2), (2048, 2)]


def point(memory=1024, current=1024, repeat=1, **factors) -> Point:
    return Point.make("h", "g", repeat, memory_mib=memory, current_memory_mib=current, **factors)


def rec(status="ok", point=None, **extra) -> dict:
    """A minimal valid record of `point` (an ok one with the guest's two readings)."""
    point = point or Point.make("h", "g", memory_mib=1024, current_memory_mib=1024)
    readings = {"memtotal_settled_kib": 921600, "free_m": {"total": 900}} if status == "ok" else {}
    return {"experiment": "e", "host": point.host, "guest": point.guest, **point.factors, "repeat": point.repeat,
            "status": status, "reason": "", **readings, **extra}


def test_atomic_write_and_read(tmp_path):
    path = tmp_path / "a" / "b.json"
    results.write_record(path, rec(balloon_timeline=[[1.0, 2, None]]))
    text = path.read_text()
    assert '"balloon_timeline": [\n    [1.0, 2, null]\n  ]' in text
    assert json.loads(text)["schema_version"] == results.SCHEMA_VERSION
    assert results.read_record(path)["status"] == "ok"
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]  # no temp files left


def test_failed_write_leaves_the_old_file_and_names_the_path(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    results.write_record(path, rec())
    before = path.read_text()
    monkeypatch.setattr(os, "replace", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(UserError, match=rf"^{path}: cannot write \(No space left on device\)$"):
        results.write_record(path, rec("error"))
    assert path.read_text() == before and len(list(tmp_path.iterdir())) == 1


def test_corrupt_record_names_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"status": "ok",')
    with pytest.raises(UserError, match=r"bad.json: corrupt result file \(line 1"):
        results.read_record(path)
    path.write_text(json.dumps(dict(rec(), schema_version=99)))
    with pytest.raises(UserError, match=r"written by a newer memballoon \(record schema 99, this tool reads up to 3\); "
                                        "upgrade memballoon"):
        results.read_record(path)


@pytest.mark.parametrize("change,problem", [
    (lambda r: r.pop("memory_mib"), "missing 'memory_mib'"),
    (lambda r: r.update(memory_mib="1024"), "'memory_mib' is str, expected int"),
    (lambda r: r.update(memory_mib=True), "'memory_mib' is bool, expected int"),
    (lambda r: r.update(status="great"), "unknown status 'great' (one of ok, oom, panic, refused, timeout, error)"),
    (lambda r: r.update(free_m={"total": "lots"}), "free_m.total is str, expected a number"),
    (lambda r: r.update(dmesg=[1, 2]), "'dmesg' holds something other than text"),
    (lambda r: r.update(balloon_timeline=[["x"]]), "'balloon_timeline' holds something other than lists of numbers"),
    (lambda r: r.update(durations={"boot_s": [1]}), "durations.boot_s is list, expected a number"),
])
def test_records_are_checked_against_the_schema(tmp_path, change, problem):
    r = dict(rec(), schema_version=2)
    change(r)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(r))
    with pytest.raises(UserError) as e:
        results.read_record(path)
    assert str(e.value) == f"{path}: invalid result record: {problem}; delete it to measure the point again"


def test_only_regular_files_inside_the_results_folder_are_read(tmp_path):
    folder = tmp_path / "results"
    p = point()
    path = p.record_path(folder)
    path.parent.mkdir(parents=True)
    os.mkfifo(path)  # would hang a plain read
    with pytest.raises(UserError, match="is not a regular file"):
        results.existing(p, folder)
    path.unlink()
    path.symlink_to("/dev/zero")  # would be an endless read
    with pytest.raises(UserError, match="outside"):
        results.existing(p, folder)
    path.unlink()
    path.write_bytes(b'{"status": "ok", "reason": "\xff\xfe"}')
    with pytest.raises(UserError, match="not UTF-8 text"):
        results.existing(p, folder)
    results.write_record(path, rec(point=point(2048)))
    with pytest.raises(UserError, match="the record says memory_mib 2048, but its place says 1024"):
        results.existing(p, folder)


def test_writer_keeps_strings_exactly():
    tricky = ["[   27.5] init: \"sh\" killed", "a,  b", "[1, 2]", "tab\there", "\u00e9\u2028", "\\"]
    r = rec(dmesg=tricky, console_excerpt=tricky, reason='"[ 1.0 ]"')
    back = json.loads(results.dumps(r))
    assert back == r


def test_what_is_measured_again(tmp_path):
    p = point()
    assert results.needs_measuring(p, tmp_path)
    for status, again in [("ok", False), ("refused", False), ("oom", False), ("timeout", True), ("error", True)]:
        results.write_record(p.record_path(tmp_path), rec(status))
        assert results.needs_measuring(p, tmp_path) is again, status
        assert results.needs_measuring(p, tmp_path, force=True)
    results.write_record(p.record_path(tmp_path), rec("oom"))
    assert results.needs_measuring(p, tmp_path, retry=True)


def test_console_markers_and_sections():
    text = (f"[    0.1] booting\n{MARK} init 2.88\n{MARK} boot-memtotal-kib 4009396\n{MARK} balloon-loaded 3.15\n"
            f"{MARK} settled 11.41 8\n{MARK} settled-memtotal-kib 863668\n{MARK} begin free\n{FREE}\n{MARK} end free\n"
            f"{MARK} begin meminfo\nMemTotal:  863668 kB\nHugePages_Total:   0\n{MARK} end meminfo\n{MARK} done 11.5\n")
    c = Console.parse(text)
    assert c.number("boot-memtotal-kib") == 4009396 and c.number("settled") == 11.41
    assert parse_free(c.sections["free"]) == {"total": 843, "used": 26, "free": 806, "shared": 2,
                                              "buff_cache": 11, "available": 741}
    assert parse_meminfo(c.sections["meminfo"]) == {"MemTotal": 863668, "HugePages_Total": 0}
    assert c.has("done") and not c.has("settle-timeout")


def test_hostile_console_numbers_are_ignored():
    c = Console.parse(f"{MARK} init inf\n{MARK} settled nan\n{MARK} done 1e400\n{MARK} boot-memtotal-kib 12x\n")
    assert [c.number(k) for k in ("init", "settled", "done", "boot-memtotal-kib")] == [None] * 4


def test_busybox_free_without_available_column():
    text = "             total       used       free     shared    buffers     cached\nMem:          1000        100        900          0         10         20\n"
    assert parse_free(text)["total"] == 1000


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


def test_console_excerpt_keeps_why_the_guest_died():
    from generator.measure import _excerpt
    lines = ["[ 1.0] boot"] + ["[ 2.0] Out of memory: Killed process 1 (sh)",
                               "[ 2.1] Kernel panic - not syncing: System is deadlocked on memory"]
    lines += [f"[ 3.0] R{i:02d}: 0000000000000000" for i in range(60)]
    got = _excerpt("\n".join(lines), limit=40)
    assert got[:3] == [lines[1], lines[2], "…"] and got[3:] == lines[-40:]
    assert _excerpt("\n".join(lines[:5]), limit=40) == lines[:5]


def test_timeline_facts_from_a_record_and_from_nonsense():
    """How far a balloon got and how long it moved, from the timeline a record (or a guest) wrote."""
    from generator.publish.analysis import SeriesPoint, timeline_facts
    rec = {"balloon_timeline": [[0.5, 4194304, None], [1.5, 4194304, None], [2.5, 3000000, 5], [3.5, 1048576, 5],
                                [4.5, 1048576, 5]]}
    assert timeline_facts(rec) == {"balloon_low_kib": 1048576, "balloon_moving_s": 1.0}
    hostile = {"balloon_timeline": [["x", 5, 1], [1.0, "1024", 1], [2.0, True, 1], [3.0, -4, 1], [4.0, None, 1], [5.0]]}
    assert timeline_facts(hostile) == {"balloon_low_kib": None, "balloon_moving_s": None}
    assert timeline_facts({}) == {"balloon_low_kib": None, "balloon_moving_s": None}
    # a point read from full records (no build summary) and from summaries gives the same floor
    died = dict(rec, status="oom", memory_mib=4096)
    assert SeriesPoint(4096, [died]).balloon_floor == SeriesPoint(4096, [dict(died, **timeline_facts(died))]).balloon_floor == 1024
