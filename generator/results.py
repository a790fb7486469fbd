"""Result records: one JSON file per point, written atomically, read back with clear errors.

Files are indented with sorted keys so that re-measuring a point gives a reviewable git diff.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .manifest import FACTORS
from .plan import Point
from .safe import inside, read_regular, write_beneath

SCHEMA_VERSION = 3  # 2: every factor is a field (memory_model, autodeflate, free_page_reporting)
# 3: the set-aside itemized (set_aside_kib, set_aside_notes) and the zone reserves at boot

# ok: measured. oom/panic: the guest died (a result). refused: the host would not start a guest that
# large (a result). timeout: no answer in time. error: something else went wrong (see reason).
STATUSES = ("ok", "oom", "panic", "refused", "timeout", "error")
FINAL = frozenset({"ok", "oom", "panic", "refused"})  # outcomes of the experiment, not of the run


MAX_RECORD_BYTES = 4 * 1024 * 1024  # a record is a few KiB; anything this large is not one of ours


def dumps(data: dict) -> str:
    """Indented JSON with sorted keys; short lists of numbers (timeline samples) stay on one line.

    Written structurally: every string is encoded by json itself, whatever it contains."""
    return _dump(data, "") + "\n"


def _dump(value, indent: str) -> str:
    inner = indent + "  "
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {_dump(value[k], inner)}"
                 for k in sorted(value, key=str)]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        if all(v is None or isinstance(v, (int, float)) for v in value):
            flat = "[" + ", ".join(json.dumps(v) for v in value) + "]"
            if len(flat) < 80:
                return flat
        return "[\n" + ",\n".join(inner + _dump(v, inner) for v in value) + "\n" + indent + "]"
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a file so that readers see the old one or the new one, never a part (safe.write_beneath:
    the folder is the caller's, nothing is followed at the file's name)."""
    path = Path(path)
    write_beneath(path.parent, path.name, data.encode("utf-8") if isinstance(data, str) else data)


def check_writable(folder: Path) -> None:
    """Fail before anything is measured if records could not be written into `folder`."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-check.", suffix=".tmp")
        try:
            os.write(fd, b"x" * 65536)  # a record's size, so a full disk shows now and not after a boot
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as e:
        raise UserError(f"{folder}: results cannot be written there ({e.strerror}); free space or fix the "
                        "permissions before measuring") from None


def write_record(path: Path, record: dict, root: Path | None = None) -> None:
    """A record into its place below `root` (the results folder), checked as reading checks it: no
    symlinked folder on the way (a planted `results/<host> -> elsewhere` is refused, not written through)."""
    record = dict(record, schema_version=SCHEMA_VERSION)
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    write_beneath(root, path.relative_to(root), dumps(record).encode("utf-8"))


# --- reading: every record is checked against its schema; a bad one is one line naming the file ---
_INT, _NUM, _STR = (int,), (int, float), (str,)
_OPT_INT, _OPT_STR, _OPT_DICT = (int, type(None)), (str, type(None)), (dict, type(None))


NOT_STARTED = object()  # a field a measured record has only once its value is known


@dataclass(frozen=True)
class Field:
    """One field of a record: the JSON types it may hold, whether every record has it, whether posts
    use it (the build keeps only those of each record in memory), and what it is."""

    types: tuple
    required: bool = False
    summary: bool = False
    doc: str = ""
    starts: object = NOT_STARTED   # what a measured record holds until it is read (a copy), if present from the start


# The record, declared once. Adding a field is one line here (summary=True if a post reads it); its
# factors come from their own declaration (manifest.FACTORS). Identity first: the point it belongs to.
RECORD: dict[str, Field] = {
    "experiment": Field(_STR, True, True, "the manifest's experiment"),
    "host": Field(_STR, True, True, "the manifest's host name"),
    "guest": Field(_STR, True, True, "the manifest's guest name"),
    "repeat": Field(_INT, True, True, "which repeat of the point (1, 2, ...)"),
    "status": Field(_STR, True, True, "ok, oom, panic, refused, timeout or error"),
    "reason": Field(_STR, True, True, "why it is not ok, in one line ('' when ok)"),
    "schema_version": Field(_INT, True, False, "the record schema it was written with"),
    "memtotal_boot_kib": Field(_OPT_INT, False, True, "the guest's MemTotal before ballooning", starts=None),
    "memtotal_settled_kib": Field(_OPT_INT, False, True, "the guest's MemTotal once the balloon holds its target",
                                  starts=None),
    "free_m": Field(_OPT_DICT, False, True, "free -m's Mem: line (total, used, free, shared, buff/cache, "
                    "available)", starts=None),
    "meminfo": Field(_OPT_DICT, False, True, "/proc/meminfo after ballooning, KiB", starts=None),
    "balloon": Field(_OPT_DICT, False, False, "libvirt's balloon statistics after ballooning, KiB", starts=None),
    "host_view": Field(_OPT_DICT, False, False, "what the host says of the domain (virsh dominfo), KiB", starts=None),
    "durations": Field(_OPT_DICT, False, True, "boot, settle and total seconds",
                       starts={"boot_s": None, "settle_s": None, "total_s": None}),
    "balloon_timeline": Field((list,), False, False, "[seconds, actual KiB, available KiB] samples while inflating",
                               starts=[]),
    "dmesg": Field((list,), False, False, "the guest's kernel lines about memory (the build keeps a few)", starts=[]),
    "console_excerpt": Field((list,), False, False, "the console's last lines of a guest that failed", starts=[]),
    "domain_type": Field(_OPT_STR, False, True, "kvm, qemu (TCG) or xen"),
    "domain_type_reason": Field(_OPT_STR, False, True, "why that domain type"),
    "hypervisor": Field(_OPT_STR, False, True, "libvirt's name and version of it, e.g. 'QEMU 7.2.0'"),
    "qemu_version": Field(_OPT_STR, False, True, "QEMU's version on QEMU hosts"),
    "libvirt_version": Field(_OPT_STR, False, True, "libvirt's version"),
    "host_kernel": Field(_OPT_STR, False, True, "the host's kernel release"),
    "guest_kernel": Field(_OPT_STR, False, True, "the guest's kernel release"),
    "balloon_model": Field(_OPT_STR, False, True, "virtio, xen or none"),
    "started_at": Field(_OPT_STR, False, True, "when the point started (ISO 8601 with offset)"),
    "tool_version": Field(_OPT_STR, False, True, "the memballoon version that measured it"),
    "manifest_sha256": Field(_OPT_STR, False, True, "the manifest's hash when it was measured"),
    "host_cores": Field(_OPT_INT, False, True, "the host's CPU cores"),
    "host_memory_mib": Field(_OPT_INT, False, True, "the host's memory"),
    "guest_vcpus": Field(_OPT_INT, False, True, "the guest's virtual CPUs"),
    "boot_method": Field(_OPT_STR, False, True, "pvh, bzimage, kernel or firmware"),
    "phases": Field(_OPT_DICT, False, True, "where the point's time went, seconds per phase", starts={}),
    "memory_backing": Field(_OPT_STR, False, True, "default or memfd guest RAM (QEMU)"),
    "xen_balloon": Field(_OPT_DICT, False, True, "Xen's balloon sysfs values in the guest, KiB"),
    "xen": Field(_OPT_DICT, False, True, "Xen's version, memory and command line (xl info)"),
    "nested": Field(_OPT_DICT, False, True, "the outer machine of a nested host"),
    "guest_kind": Field(_OPT_STR, False, True, "probe or system"),
    "image": Field(_OPT_STR, False, True, "a full system's image"),
    "reading": Field(_OPT_STR, False, True, "how a full system was read: agent, console or ssh"),
    "oom_kills": Field((list,), False, True, "processes the guest's OOM killer killed"),
    "cross_check": Field(_OPT_DICT, False, True, "the guest's own MemTotal against the balloon's available"),
    "set_aside_kib": Field(_OPT_DICT, False, True, "memory minus MemTotal at boot, by what it is for (page "
                                                   "descriptors, bounce buffer, ..., unexplained), KiB"),
    "set_aside_notes": Field((list,), False, True, "why part of the set-aside is unexplained, if it is"),
    "kernel_parameters": Field(_OPT_STR, False, True, "extra kernel parameters the host gave every guest "
                                                      "(hosts[].guest_cmdline), when it gave any"),
    "plug": Field(_OPT_DICT, False, True, "memory plugged into the running guest and unplugged again: KiB plugged, "
                                          "MemTotal and MemFree before, plugged and unplugged, seconds each step took"),
    "zone_reserves": Field(_OPT_DICT, False, True, "the page allocator's zones at boot (managed, min/low/high "
                                                   "watermarks, protection; KiB) and the sysctls that size them"),
}


def starting_fields() -> dict:
    """What a measured record holds before anything is read: every field declared with `starts`."""
    import copy

    return {name: copy.deepcopy(f.starts) for name, f in RECORD.items() if f.starts is not NOT_STARTED}


def summary_fields() -> tuple[str, ...]:
    """What a post sees of each record (besides its factors): its summary, the fields RECORD marks. The
    bulky parts (meminfo, the balloon timeline, the console) stay in the JSON files."""
    return tuple(name for name, f in RECORD.items() if f.summary)


class Record(dict):
    """A record as read: a dict (written back, hashed and compared as JSON) whose fields can also
    be read as attributes (`record.status`, `record.memory_mib`); a field it lacks reads as None."""

    __slots__ = ()

    def __getattr__(self, name: str):
        if name in self:
            return self[name]
        if name in RECORD or any(f.name == name for f in FACTORS):
            return None  # a field this record does not have
        raise AttributeError(f"a record has no field {name!r}")


def as_record(record: dict) -> Record:
    """A record read by attribute: the same one if it is a Record already, else a Record of it."""
    return record if isinstance(record, Record) else Record(record)


_NUMBER_MAPS = ("free_m", "meminfo", "balloon", "host_view", "xen_balloon", "set_aside_kib")


_REQUIRED_NAMES = frozenset(name for name, f in RECORD.items() if f.required)


def _fields() -> dict[str, tuple[tuple, bool]]:
    return {**{f.name: ((f.kind,), True) for f in FACTORS},
            **{name: (f.types, f.required) for name, f in RECORD.items()}}


def _problem(record: dict) -> str | None:
    """What is wrong with a record, or None."""
    for name, (types, required) in _fields().items():
        if name not in record:
            if required:
                return f"missing {name!r}"
            continue
        value = record[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return f"{name!r} is {type(value).__name__}, expected {' or '.join(t.__name__ for t in types)}"
    if record["status"] not in STATUSES:
        return f"unknown status {record['status']!r} (one of {', '.join(STATUSES)})"
    for name in _NUMBER_MAPS:
        for k, v in (record.get(name) or {}).items():
            if isinstance(v, bool) or not isinstance(v, _NUM + (type(None),)):
                return f"{name}.{k} is {type(v).__name__}, expected a number"
    zones = record.get("zone_reserves")
    if zones is not None and (not isinstance(zones.get("zones"), dict) or
                              any(not isinstance(z, dict) for z in zones["zones"].values())):
        return "'zone_reserves' is not {'zones': {name: {...}}, 'sysctl': {...}}"
    for name in ("dmesg", "console_excerpt", "oom_kills", "set_aside_notes"):
        if any(not isinstance(line, str) for line in record.get(name, [])):
            return f"{name!r} holds something other than text"
    for sample in record.get("balloon_timeline", []):
        if not isinstance(sample, list) or any(isinstance(v, bool) or not isinstance(v, _NUM + (type(None),))
                                               for v in sample):
            return "'balloon_timeline' holds something other than lists of numbers"
    for name in ("durations", "phases"):
        for k, v in (record.get(name) or {}).items():
            if isinstance(v, bool) or not isinstance(v, _NUM + (type(None),)):
                return f"{name}.{k} is {type(v).__name__}, expected a number"
    return _implausible(record)


# --- numbers and dates: bounded, and consistent with each other --------------------------------------
MAX_NUMBER = 2 ** 53           # every number a record holds (KiB, bytes, seconds) is far below this
MAX_DIGITS = 18                # digits of a JSON integer parsed at all (checked before converting)
FUTURE_TOLERANCE = _dt.timedelta(days=1)  # clocks differ; a date further ahead is not a measurement
_STARTED_AT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})")
_NON_NEGATIVE = ("memory_mib", "current_memory_mib", "memtotal_boot_kib", "memtotal_settled_kib", "host_cores",
                 "host_memory_mib", "guest_vcpus")


def _numbers(value, where: str):
    """(field path, number) of every number in a record, however deep."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield where, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _numbers(v, f"{where}[{i}]")


def _implausible(record: dict) -> str | None:
    """Numbers and dates a post would publish or a reader would trip over: every number finite and
    within ±2**53; sizes and counts not negative; an ok record has its readings (MemTotal and free -m's
    total), MemTotal within `memory`, free -m's total within MemTotal; started_at an ISO 8601 time with
    its offset, not in the future."""
    for where, v in _numbers(record, ""):
        if not math.isfinite(v) or abs(v) > MAX_NUMBER:
            return f"{where!r} is {'too large' if not math.isfinite(v) or abs(v) > 1e30 else v}, outside ±2**53"
    for name in _NON_NEGATIVE:
        if (record.get(name) or 0) < 0:
            return f"{name!r} is {record[name]}, below 0"
    if record["repeat"] < 1:
        return f"'repeat' is {record['repeat']}, below 1"
    for name in ("free_m", "meminfo", "balloon", "host_view", "xen_balloon"):
        for k, v in (record.get(name) or {}).items():
            if v is not None and v < 0:
                return f"{name}.{k} is {v}, below 0"
    memory_kib = record["memory_mib"] * 1024
    for name in ("memtotal_boot_kib", "memtotal_settled_kib"):
        if record.get(name) is not None and record[name] > memory_kib:
            return f"{name!r} is {record[name]} KiB, more than memory ({record['memory_mib']} MiB)"
    if record["status"] == "ok":
        total = record.get("memtotal_settled_kib")
        free = (record.get("free_m") or {}).get("total")
        if not total:
            return "an ok record without 'memtotal_settled_kib' (the guest's MemTotal)"
        if not free or not isinstance(free, int):
            return "an ok record without 'free_m.total' (free -m's total) as a positive whole number"
        if free > total // 1024 + 1:
            return f"free_m.total is {free} MiB, more than MemTotal ({total} KiB)"
    started = record.get("started_at")
    if started is not None:
        when = None
        if _STARTED_AT.fullmatch(started):
            try:
                when = _dt.datetime.fromisoformat(started.replace("Z", "+00:00"))
            except ValueError:
                pass
        if when is None:
            return f"'started_at' {started[:40]!r} is not an ISO 8601 time with its offset (2026-11-20T10:00:00+00:00)"
        if when > _dt.datetime.now(_dt.timezone.utc) + FUTURE_TOLERANCE:
            return f"'started_at' {started!r} is in the future"
    return None


def _bounded_int(digits: str) -> int | float:
    """A JSON integer, its digits counted before converting: one too long to be a reading is read as
    inf, which the checks above refuse naming its field."""
    return int(digits) if len(digits.lstrip("-")) <= MAX_DIGITS else math.inf


def checked(record: dict) -> dict:
    """A record the sweep is about to write, made one its reader accepts: an ok record whose readings
    do not hold together (a guest may print anything) becomes an error saying why, without the guest's
    readings if they are what is wrong; anything else wrong leaves only the point and why."""
    problem = _problem(record)
    if problem and record.get("status") == "ok":
        record = dict(record, status="error", reason=f"implausible readings: {problem}"[:400])
        problem = _problem(record)
    if problem:
        record = {k: None if k in _GUEST_READINGS else v for k, v in record.items()}
        problem = _problem(record)
    if problem:
        keep = {k: record[k] for k in _fields() if k in record and _fields()[k][1]}
        record = dict(keep, status="error", reason=f"the record could not be kept: {problem}"[:400])
    return record


_GUEST_READINGS = ("memtotal_boot_kib", "memtotal_settled_kib", "free_m", "meminfo", "xen_balloon")


def _migrate(record: dict, path: Path) -> dict:
    """Bring an older record up to SCHEMA_VERSION, one `_update_to_N` step at a time."""
    version = record.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UserError(f"{path}: not a result record (schema_version {version!r}); delete it to measure the "
                        "point again")
    if version > SCHEMA_VERSION:
        raise UserError(f"{path}: written by a newer memballoon (record schema {version}, this tool reads up to "
                        f"{SCHEMA_VERSION}); upgrade memballoon to read it")
    while version < SCHEMA_VERSION:  # one step per schema version, like asv's update_to_N
        version += 1
        record = globals()[f"_update_to_{version}"](record)
        record["schema_version"] = version
    return _with_factor_defaults(record)


def _with_factor_defaults(record: dict) -> dict:
    """A factor declared after a record was written was at its default when it was measured: every
    record, of every schema version, gets each missing factor's default. So declaring a factor never
    makes the archive unreadable, and needs no schema bump."""
    missing = {f.name: f.default for f in FACTORS if not f.required and f.name not in record}
    return {**missing, **record} if missing else record


def _update_to_2(record: dict) -> dict:
    """Version 1 had memory and currentMemory only: every other factor was at its default (a virtio
    balloon, no autodeflate, no free page reporting), which _with_factor_defaults fills in."""
    return record


def _update_to_3(record: dict) -> dict:
    """Version 3 added the itemized set-aside and the zone reserves, read at boot with memblock=debug.
    An older record was not booted with it: the fields stay absent (read as None, 'not itemized'),
    except for a Xen PV guest, which is itemized from the kernel's totals and Xen's map even now
    (it boots without memblock=debug): its kept dmesg lines hold both, so it is itemized as it is read,
    by the same function a new record is itemized by, and says so."""
    dmesg = record.get("dmesg")
    if (record.get("set_aside_kib") is None and record.get("status") == "ok" and isinstance(dmesg, list)
            and all(isinstance(line, str) for line in dmesg) and any("Xen: [mem" in line for line in dmesg)
            and isinstance(record.get("memtotal_boot_kib"), int) and isinstance(record.get("memory_mib"), int)
            and isinstance(record.get("current_memory_mib"), int)):
        from .guests.setaside import itemize

        found = itemize("\n".join(dmesg[:200]), record["memory_mib"] * 1024, record["memtotal_boot_kib"],
                        current_kib=record["current_memory_mib"] * 1024)
        if found:
            record = {**record, "set_aside_kib": found["items"],
                      "set_aside_notes": found["notes"] + ["itemized when read, from the kernel's totals and Xen's map "
                                                           "in the dmesg lines the record kept"]}
    return record


def read_record(path: Path, root: Path | None = None) -> dict:
    """A record from its file: a regular file (inside `root` when given), UTF-8 JSON, schema-checked."""
    if root is not None:
        inside(path, root, "result file")
    raw = read_regular(path, MAX_RECORD_BYTES, "result file")
    return parse_record(raw, path)


def parse_record(text: str | bytes, path: Path, keep: frozenset | None = None) -> Record:
    """A record from its file's text; `path` only names the file in errors. With `keep`, the record
    is cut to those fields (and the required ones) before it is checked: a reader that needs a few
    fields of 10,000 records checks just those."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text (byte {e.start}); delete it to measure the point again") from None
    try:
        record = json.loads(text, parse_constant=_no_constant, parse_int=_bounded_int)
    except (json.JSONDecodeError, RecursionError, ValueError) as e:
        detail = f"line {e.lineno}: {e.msg}" if isinstance(e, json.JSONDecodeError) else type(e).__name__
        raise UserError(f"{path}: corrupt result file ({detail}); delete it to measure the point again") from None
    if not isinstance(record, dict) or "status" not in record:
        raise UserError(f"{path}: not a result record (no 'status'); delete it to measure the point again")
    record = _migrate(record, Path(path))
    if keep is not None:
        record = {k: v for k, v in record.items() if k in keep or k in _REQUIRED_NAMES}
    problem = _problem(record)
    if problem:
        raise UserError(f"{path}: invalid result record: {problem}; delete it to measure the point again")
    return Record(record)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def read_point(point: Point, results_dir: Path) -> tuple[dict, bytes] | None:
    """(record, its file's bytes) of a point, or None; a record that belongs to another point is refused."""
    path = point.record_path(results_dir)
    if not os.path.lexists(path):
        return None
    inside(path, results_dir, "result file")
    raw = read_regular(path, MAX_RECORD_BYTES, "result file")
    record = parse_record(raw, path)
    check_identity(record, point, path)
    return record, raw


def check_identity(record: dict, point: Point, path: Path) -> None:
    """A record must belong to the point its path names."""
    for name in ["host", "guest", "repeat"] + [f.name for f in FACTORS]:
        if record[name] != getattr(point, name):
            raise UserError(f"{path}: the record says {name} {record[name]!r}, but its place says "
                            f"{getattr(point, name)!r}; move or delete it")


def existing(point: Point, results_dir: Path) -> dict | None:
    found = read_point(point, results_dir)
    return found[0] if found else None


def needs_measuring(point: Point, results_dir: Path, force: bool = False, retry: bool = False) -> bool:
    """Measured already (ok, or a failure that is a result) unless forced; timeouts/errors are retried."""
    if force:
        return True
    record = existing(point, results_dir)
    if record is None:
        return True
    if record["status"] == "ok":
        return False
    return retry or record["status"] not in FINAL
