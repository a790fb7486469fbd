"""Records on disk (generator/results.py): atomic writes, the schema check, what is measured again,
and the folders records may not be read from or written through."""
from __future__ import annotations

import json
import os

import pytest

from generator import results
from generator.errors import UserError
from tests.support.disk import fill, small_tmpfs  # noqa: F401
from tests.support.records import point, rec  # noqa: F401
from tests.support.sample import record  # noqa: F401


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


def test_results_folder_is_checked_before_anything_boots(tmp_path, small_tmpfs):
    full = small_tmpfs / "results"
    full.mkdir()
    fill(small_tmpfs)
    with pytest.raises(UserError, match=rf"{full}: results cannot be written there \(No space left on device\)"):
        results.check_writable(full)


def test_a_sweep_never_writes_a_record_its_reader_refuses(tmp_path):
    """A guest reporting more MemTotal than its memory makes an error record, kept and readable."""
    rec = dict(record("precise", 1024, 1), memtotal_settled_kib=10 ** 12, schema_version=results.SCHEMA_VERSION)
    kept = results.checked(rec)
    assert kept["status"] == "error" and "implausible readings: 'memtotal_settled_kib' is" in kept["reason"]
    path = tmp_path / "r.json"
    results.write_record(path, kept)
    assert results.read_record(path)["status"] == "error"
    worse = results.checked(dict(rec, started_at="9999-01-01T00:00:00+00:00", status="oom"))
    assert worse["status"] == "error" and "started_at" in worse["reason"] and "started_at" not in worse
    results.write_record(path, worse)
    assert results.read_record(path)["reason"].startswith("the record could not be kept")
    good = dict(record("precise", 1024, 1), schema_version=results.SCHEMA_VERSION)
    assert results.checked(good) == good


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


def test_a_misspelt_record_field_is_an_error_not_none():
    r = results.Record({"status": "ok"})
    assert r.status == "ok" and r.free_m is None  # a field this record lacks
    with pytest.raises(AttributeError, match="no field 'memtotal_setled_kib'"):
        r.memtotal_setled_kib
