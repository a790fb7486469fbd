"""What changed since a post's previous publication, told in the post itself.

A built post names the results commit its records came from (its provenance). When the post is
rebuilt from records that differ from that commit's, it gains a dated entry listing what moved, in
a reader's words; the entries live in the post's own front matter (`updates`), newest first, so
successive publications accumulate and a rebuild without changes writes the same bytes. Only
numbers, dates, labels from the manifest and commit ids reach the page: never a commit message or a
branch name.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import sys
import tomllib
from pathlib import Path

from .. import hypervisors
from .compare import CLASSES, commit_named_in, Side, compare_sides, group_key, resolve_revision, revision_side
from ..errors import UserError
from ..gitrepo import git_toplevel
from ..manifest import FACTORS, Manifest, project_root
from ..safe import is_inside, read_regular
from ..plan import points
from ..text import plain
from ..units import mib_label

MAX_ENTRIES = 50
MAX_LINES = 200


def previous(page: Path) -> tuple[list[dict], str | None]:
    """(the entries the published page holds, the results commit it names) — ([], None) if none."""
    if not page.is_file():
        return [], None
    try:
        text = read_regular(page, 16 * 1024 * 1024, "post").decode("utf-8", errors="replace")
    except UserError:
        return [], None
    entries: list[dict] = []
    fm = re.match(r"\A\+\+\+\n(.*?)\n\+\+\+\n", text, re.S)
    if fm:
        try:
            raw = tomllib.loads(fm.group(1)).get("updates", [])
        except tomllib.TOMLDecodeError:
            raw = []
        for e in raw if isinstance(raw, list) else []:  # the page may have been edited: keep only what is well-formed
            if isinstance(e, dict) and isinstance(e.get("date"), str) and re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", e["date"]) \
                    and isinstance(e.get("base"), str) and re.fullmatch(r"[0-9a-f]{12}", e["base"]) \
                    and isinstance(e.get("changes"), list) and all(isinstance(c, str) for c in e["changes"]):
                entry = {"date": e["date"], "base": e["base"], "changes": e["changes"][:MAX_LINES]}
                readings = e.get("readings")
                if isinstance(readings, int) and not isinstance(readings, bool) and 0 <= readings <= len(entry["changes"]):
                    entry["readings"] = readings  # how many of the changes are readings (the rest: versions)
                else:  # written before entries counted them: the readings are the lines before the first version
                    entry["readings"] = next((i for i, c in enumerate(entry["changes"]) if _VERSION_LINE.search(c)),
                                             len(entry["changes"]))
                entries.append(entry)
    return entries[:MAX_ENTRIES], commit_named_in(text)


# provenance_lines()' shapes: "<what> on <where>: A then, B now.", "...: B now as well.", "...: no longer A."
_VERSION_LINE = re.compile(r": .{0,400}( then, .{0,400} now| now as well)( \(.{0,400} throughout\))?\.$|: no longer ")

# What a reading line says (lines()' shapes), and how the notice at the top of a post counts it.
HEADLINE = (("added", "point newly measured", "points newly measured"), ("moved", "reading moved", "readings moved"),
            ("status changed", "outcome changed", "outcomes changed"),
            ("removed", "point no longer measured", "points no longer measured"), ("other", "change", "changes"))


def kind_of_line(line: str) -> str:
    if line.startswith("Newly measured: "):
        return "added"
    if line.startswith("No longer measured: "):
        return "removed"
    if re.search(r" now sees [0-9.,]+ MiB, [0-9.,]+ MiB (less|more) than on ", line):
        return "moved"
    if re.search(r": .{1,200} on .{1,40}, now .{1,200}\.$", line):
        return "status changed"
    return "other"   # a line of a shape this version does not write: counted, not named


def headline(entry: dict) -> list[tuple[int, str]]:
    """What the notice at the top of a post says of its newest update: [(count, 'points newly measured'),
    …], readings only (a version that changed is told under "What changed", not at the top)."""
    counts: dict[str, int] = {}
    for line in entry["changes"][:entry.get("readings", len(entry["changes"]))]:
        kind = kind_of_line(line)
        counts[kind] = counts.get(kind, 0) + 1
    return [(counts[kind], one if counts[kind] == 1 else many) for kind, one, many in HEADLINE if counts.get(kind)]


def _day(records: list[dict]) -> str | None:
    stamps = sorted(r["started_at"] for r in records if r.get("started_at"))
    return stamps[-1][:10] if stamps else None


def _where(records: list[dict], manifest: Manifest, labels: dict[str, str]) -> str:
    """'Debian 13 on QEMU (TCG) at 1 GiB' (with currentMemory and other factors where they vary)."""
    r = records[0]
    parts = [f"{labels.get(r['guest'], r['guest'])} on {hypervisors.label(r.get('domain_type') or '')}",
             f"at {mib_label(r['memory_mib'])}"]
    for f in FACTORS:
        if f.axis or f.name == "memory_mib":
            continue
        values = getattr(manifest.sweep, f.sweep)
        if len(values) > 1 or (not f.required and not f.is_default(r[f.name])):
            parts.append(f.label(r[f.name]))
    return " ".join(parts)


_WORDS = {"oom": "ran out of memory", "panic": "panicked", "refused": "was refused by the host",
          "timeout": "did not answer in time", "error": "failed to run"}


def _outcome(s: dict) -> str:
    if s["status"] == "ok" and s["median_mib"] is not None:
        return f"saw {s['median_mib']:g} MiB"
    return " and ".join(_WORDS.get(x, "saw " + x) for x in s["status"].split("/"))


def lines(comparison, manifest: Manifest, labels: dict[str, str]) -> list[str]:
    old, new = comparison.old.points, comparison.new.points
    out = []
    order = {k: i for i, k in enumerate(CLASSES)}
    for c in sorted(comparison.changes, key=lambda c: (order[c.kind], c.point)):
        if c.kind == "unchanged":
            continue
        recs = new.get(c.point) or old.get(c.point)
        where = _where(recs, manifest, labels)
        then = _day(old.get(c.point, [])) or "the previous publication"
        if c.kind == "moved":
            d = c.new["median_mib"] - c.old["median_mib"]
            out.append(f"{where} now sees {c.new['median_mib']:g} MiB, {abs(d):g} MiB {'less' if d < 0 else 'more'} "
                       f"than on {then}.")
        elif c.kind == "status changed":
            out.append(f"{where}: {_outcome(c.old)} on {then}, now {_outcome(c.new)}.")
        elif c.kind == "added":
            out.append(f"Newly measured: {where} ({_outcome(c.new)}).")
        else:
            out.append(f"No longer measured: {where} ({_outcome(c.old)} on {then}).")
    return out[:MAX_LINES]


def provenance_lines(comparison) -> list[str]:
    """What the points ran with that changed (versions of the host, the hypervisor, the kernels): only
    what differs, so a version that was there before and is still there is not said again."""
    out = []
    for p in comparison.provenance:
        old, new = list(p["old"]), list(p["new"])
        gone, came = [v for v in old if v not in new], [v for v in new if v not in old]
        kept = [v for v in new if v in old]
        if gone and came:
            text = f"{', '.join(gone)} then, {', '.join(came)} now"
        elif came:
            text = f"{', '.join(came)} now as well"
        elif gone:
            text = f"no longer {', '.join(gone)}"
        else:
            continue
        out.append(f"{p['what']} on {p['where']}: {text}" + (f" ({', '.join(kept)} throughout)." if kept else "."))
    return out


def entries(manifest: Manifest, folder: Path, page: Path, records: list[dict], labels: dict[str, str],
            note=lambda text: print(plain(text), file=sys.stderr)) -> list[dict]:
    """The post's update entries after this build: the published ones, with one (re)computed for the
    commit the published page names when the records differ from that commit's."""
    published, base = previous(page)
    if base is None:
        return published
    top = git_toplevel(project_root(Path(manifest.path)).resolve())
    folder = folder.resolve()
    if top is None or not is_inside(folder, top):
        return published
    try:
        commit = resolve_revision(top, base)
        old = revision_side(top, commit, os.path.relpath(folder, top), commit[:12])
    except UserError as e:
        note(f"note: {manifest.experiment}: cannot tell what changed since the last publication ({e}); "
             "the post is built without an update")
        return published
    if old.missing:
        note(f"note: {manifest.experiment}: cannot tell what changed since the last publication ({old.missing}); "
             "the post is built without an update")
        return published
    planned = {p.key.rsplit("-r", 1)[0] for p in points(manifest)}
    old.points = {k: v for k, v in old.points.items() if k in planned}  # points the manifest no longer has: not news
    new = Side("now")
    for r in records:
        new.points.setdefault(group_key(r), []).append(r)
    comparison = compare_sides(manifest.experiment, old, new)
    rest = [e for e in published if e["base"] != commit[:12]]
    if not comparison.changed:
        return rest
    day = _day(records) or _dt.date.today().isoformat()
    readings = lines(comparison, manifest, labels)
    versions = provenance_lines(comparison)
    changes = (readings + versions)[:MAX_LINES]
    return [{"date": day, "base": commit[:12], "changes": changes, "readings": min(len(readings), len(changes))}] \
        + rest[:MAX_ENTRIES - 1]
