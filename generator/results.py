"""Result records: one JSON file per point, written atomically, read back with clear errors.

Files are indented with sorted keys so that re-measuring a point gives a reviewable git diff.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable

from .errors import UserError
from .plan import Point

SCHEMA_VERSION = 1

# ok: measured. oom/panic: the guest died (a result). refused: the host would not start a guest that
# large (a result). timeout: no answer in time. error: something else went wrong (see reason).
STATUSES = ("ok", "oom", "panic", "refused", "timeout", "error")
FINAL = frozenset({"ok", "oom", "panic", "refused"})  # outcomes of the experiment, not of the run


_SCALAR = r'(?:-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|null|true|false|"[^"\n]*")'
_FLAT_LIST = re.compile(r"\[\s*(" + _SCALAR + r"(?:,\s*" + _SCALAR + r")*)\s*\]")


def dumps(data: dict) -> str:
    """Indented, sorted JSON; short lists of numbers (timeline samples) stay on one line."""
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False)

    def flatten(m: re.Match) -> str:
        inner = re.sub(r",\s*", ", ", m.group(1).strip())
        return f"[{inner}]" if len(inner) < 80 and not inner.startswith('"') else m.group(0)

    return _FLAT_LIST.sub(flatten, text) + "\n"


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a file so that readers see the old one or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_record(path: Path, record: dict) -> None:
    record = dict(record, schema_version=SCHEMA_VERSION)
    write_atomic(path, dumps(record))


def _migrate(record: dict, path: Path) -> dict:
    version = record.get("schema_version")
    if version == SCHEMA_VERSION:
        return record
    raise UserError(f"{path}: record schema version {version!r} is not supported by this tool "
                    f"(expects {SCHEMA_VERSION}); re-measure it with 'sweep --force --only …'")


def read_record(path: Path) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read the result ({e.strerror})") from None
    return parse_record(text, path)


def parse_record(text: str | bytes, path: Path) -> dict:
    """A record from its file's text; `path` only names the file in errors."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: corrupt result file (line {e.lineno}: {e.msg}); delete it to measure the point "
                        "again") from None
    if not isinstance(record, dict) or "status" not in record:
        raise UserError(f"{path}: not a result record (no 'status'); delete it to measure the point again")
    return _migrate(record, Path(path))


def existing(point: Point, results_dir: Path) -> dict | None:
    path = point.record_path(results_dir)
    return read_record(path) if path.exists() else None


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


def load_all(points: Iterable[Point], results_dir: Path) -> list[dict]:
    """Records of the given points that exist, in plan order."""
    out = []
    for p in points:
        r = existing(p, results_dir)
        if r is not None:
            out.append(r)
    return out
