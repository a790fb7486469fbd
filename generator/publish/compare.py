"""What changed between two sets of records: two git revisions, or a revision and the working tree.

Records are read from git's objects directly (`git ls-tree` and one `git cat-file --batch`), with
no checkout and nothing written; they go through the same reader as any record (schema checks,
migrations), so records of an older schema compare with new ones. Points are matched without their
repeat, and classified: unchanged (the medians differ by no more than the repeats' spread, or
1 MiB), moved, status changed (ok -> oom, ...), added, removed; plus what changed in the provenance
(kernels, QEMU, libvirt, Xen).
"""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .. import results
from ..results import as_record
from ..errors import UserError
from ..gitrepo import git, git_toplevel
from ..manifest import FACTORS, Manifest, project_root
from ..plan import Point, results_dir
from ..safe import is_inside, read_regular
from ..text import plain
from .series import seen_mib

FORMAT_VERSION = 1  # of compare --json's shape
CLASSES = ("moved", "status changed", "added", "removed", "unchanged")
MAX_RECORDS = 200_000
# The provenance line of a built post (templates/macros.md.j2): anchored at a line's start, in the body
# (not the front matter), the last one; text from records in a body has its backticks escaped.
_PROVENANCE_RE = re.compile(r"^- Raw results: [^\n]*, git commit `([0-9a-f]{12,40})`", re.M)


def commit_named_in(text: str) -> str | None:
    """The results commit a built post names in its provenance, or None."""
    body = re.sub(r"\A\+\+\+\n.*?\n\+\+\+\n", "", text, count=1, flags=re.S)
    found = _PROVENANCE_RE.findall(body)
    return found[-1] if found else None


@dataclass
class Side:
    """One set of records: where they come from and the records by point (without the repeat)."""

    label: str                                   # 'abc123456789' or 'working tree'
    points: dict[str, list[dict]] = field(default_factory=dict)
    missing: str = ""                            # why there are no records ('' when there are)
    count: int = 0
    stray: int = 0                               # files that are not where their record belongs (ignored)


@dataclass
class Change:
    point: str
    kind: str                                    # one of CLASSES
    old: dict | None = None                      # {'median_mib', 'spread_mib', 'status', 'n'}
    new: dict | None = None

    @property
    def remeasured(self) -> bool:
        """Both sides have the point, from different boots (other start times)."""
        return bool(self.old and self.new and self.old.get("measured_at") != self.new.get("measured_at"))

    def as_json(self) -> dict:
        return {"point": self.point, "class": self.kind, "old": self.old, "new": self.new,
                "remeasured": self.remeasured}


@dataclass
class Comparison:
    experiment: str
    old: Side
    new: Side
    changes: list[Change]
    provenance: list[dict]                       # {'what', 'where', 'old', 'new'}

    @property
    def counts(self) -> dict[str, int]:
        return {k: sum(1 for c in self.changes if c.kind == k) for k in CLASSES}

    @property
    def changed(self) -> bool:
        return any(c.kind != "unchanged" for c in self.changes) or bool(self.provenance)

    def as_json(self) -> dict:
        return {"experiment": self.experiment, "old": self.old.label, "new": self.new.label, "counts": self.counts,
                "points": [c.as_json() for c in self.changes if c.kind != "unchanged" or c.remeasured],
                "provenance": self.provenance}


# --- reading records ---------------------------------------------------------------------------------------
def group_key(record: dict) -> str:
    """A point's key without its repeat: 'local/debian/m4096-c1024'."""
    record = as_record(record)
    p = Point.make(record.host, record.guest, 1, (record.experiment or ""),
                   **{f.name: record[f.name] for f in FACTORS})
    return p.key.rsplit("-r", 1)[0]


# What a comparison reads of each record (besides its identity and factors, which every record has).
KEEP = frozenset({"free_m", "balloon", "memtotal_settled_kib", "memtotal_boot_kib", "started_at", "domain_type", "guest_kernel",
                  "qemu_version", "libvirt_version", "xen", "host_kernel"} | {f.name for f in FACTORS})


def _add(side: Side, record: dict) -> None:
    record = as_record(record)
    side.points.setdefault(group_key(record), []).append(record)
    side.count += 1
    if side.count > MAX_RECORDS:
        raise UserError(f"more than {MAX_RECORDS} records in {side.label}; compare fewer experiments at once")


def worktree_side(folder: Path) -> Side:
    """The records in the results folder as they are on disk (regular files only, checked)."""
    side = Side("working tree")
    folder = folder.resolve()
    if not folder.is_dir():
        side.missing = f"no results folder {folder}"
        return side
    for dirpath, _dirs, names in os.walk(folder):  # does not descend into symlinked folders
        for name in sorted(names):
            path = Path(dirpath) / name
            if name.endswith(".json") and not name.startswith(".") and not path.is_symlink():
                record = results.parse_record(read_regular(path, results.MAX_RECORD_BYTES, "result file"), path, KEEP)
                if _where_it_belongs(record) != os.path.relpath(path, folder):
                    side.stray += 1  # not where the sweep files it: a copy, not another repeat
                    continue
                _add(side, record)
    return side


def resolve_revision(top: Path, rev: str) -> str:
    """The full commit id of a revision, or a UserError saying why it cannot be read."""
    if not re.fullmatch(r"[A-Za-z0-9._/~^@{}:+-]{1,200}", rev) or rev.startswith("-"):
        raise UserError(f"{plain(rev)!r} is not a git revision (a commit, tag or branch name)")
    out = git(top, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}")
    if out.returncode != 0 or not out.stdout.strip():
        exists = git(top, "rev-parse", "--verify", "--quiet", "--end-of-options", rev)
        found = git(top, "cat-file", "-t", exists.stdout.strip()) if exists.returncode == 0 and exists.stdout.strip() \
            else None
        kind = found.stdout.strip() if found is not None and found.returncode == 0 else ""
        if kind in ("tree", "blob"):  # there, but not a commit (a 40-digit id names no object if absent)
            raise UserError(f"revision {plain(rev)!r} is a {plain(kind)}, not a commit: compare reads a commit's "
                            "records (and its date); name a commit, tag or branch")
        shallow = git(top, "rev-parse", "--is-shallow-repository").stdout.strip() == "true"
        raise UserError(f"revision {plain(rev)!r} does not exist in {top}"
                        + ("; this clone is shallow: fetch its history with 'git fetch --unshallow'" if shallow
                           else "; 'git log --oneline' lists commits, 'git tag' the tags"))
    return out.stdout.strip()


MAX_TREE_ENTRIES = 200_000          # paths listed under a results folder at one revision
MAX_SIDE_BYTES = 512 * 1024 * 1024  # distinct record blobs read from one revision, in all


def revision_side(top: Path, commit: str, rel: str, label: str) -> Side:
    """The records under `rel` (a folder relative to the repository) at `commit`, from git's objects.

    A history is someone else's input: its trees can name one large blob thousands of times (a few KB
    of trees, gigabytes to read). So the listing is bounded, each blob is read once however many paths
    name it, sizes are asked first (`--batch-check`) and bounded one by one and in all, and every git
    failure or time-out is one line."""
    side = Side(label)
    try:
        listing = git(top, "ls-tree", "-r", "-z", "--full-tree", commit, "--", rel, text=False, timeout=120)
    except subprocess.TimeoutExpired:
        raise UserError(f"git ls-tree {label} did not finish within 120 s") from None
    if listing.returncode != 0:
        raise UserError(f"git ls-tree {label} failed: {plain(listing.stderr.decode(errors='replace'))[:200]}")
    paths: list[tuple[str, str]] = []
    for n, entry in enumerate(listing.stdout.split(b"\0")):
        if n > MAX_TREE_ENTRIES:
            raise UserError(f"{label}: more than {MAX_TREE_ENTRIES} files under {rel}; not a results folder")
        if not entry:
            continue
        meta, _, path = entry.partition(b"\t")
        parts = meta.split(b" ")
        if len(parts) != 3:
            continue
        mode, kind, sha = parts
        name = path.decode("utf-8", errors="replace")
        if kind == b"blob" and mode in (b"100644", b"100755") and name.endswith(".json") and \
                not os.path.basename(name).startswith(".") and re.fullmatch(rb"[0-9a-f]{40,64}", sha):
            paths.append((sha.decode(), name))
    if not paths:
        side.missing = f"no records in {rel} at {label} (the results folder moved, or none were committed then)"
        return side
    shas = sorted({sha for sha, _ in paths})
    sizes = _blob_sizes(top, shas, label)
    total = 0
    for sha, name in paths:
        if sizes[sha] > results.MAX_RECORD_BYTES:
            raise UserError(f"{label}:{name}: the result file is {sizes[sha]} bytes, more than the "
                            f"{results.MAX_RECORD_BYTES} allowed")
    for sha in shas:
        total += sizes[sha]
        if total > MAX_SIDE_BYTES:
            raise UserError(f"{label}: the records under {rel} are more than {MAX_SIDE_BYTES // 2 ** 20} MiB; "
                            "compare fewer experiments at once")
    data = _blobs(top, shas, label)
    for sha, name in paths:
        record = results.parse_record(data[sha], Path(f"{label}:{name}"), KEEP)
        if _where_it_belongs(record) != os.path.relpath(name, rel):
            side.stray += 1  # a copy, or a record filed under another point's name: not another repeat
            continue
        _add(side, record)
    return side


def _where_it_belongs(record) -> str:
    """The path, relative to its results folder, at which the sweep files a record (host/guest/file)."""
    r = as_record(record)
    try:
        point = Point.make(r.host, r.guest, r.repeat or 1, **{f.name: r.get(f.name, f.default) for f in FACTORS})
    except (TypeError, ValueError):
        return ""
    return str(point.record_path(Path("")))


def _blob_sizes(top: Path, shas: list[str], label: str) -> dict[str, int]:
    try:
        out = git(top, "cat-file", "--batch-check", input="".join(s + "\n" for s in shas).encode(), timeout=120)
    except subprocess.TimeoutExpired:
        raise UserError(f"git cat-file did not list the records at {label} within 120 s") from None
    sizes = {}
    for line in out.stdout.decode(errors="replace").splitlines():
        parts = line.split(" ")
        if len(parts) == 3 and parts[1] == "blob" and parts[2].isdigit():
            sizes[parts[0]] = int(parts[2])
    missing = [s for s in shas if s not in sizes]
    if out.returncode != 0 or missing:
        raise UserError(f"git cat-file could not find the records at {label} (a partial clone?)")
    return sizes


def _blobs(top: Path, shas: list[str], label: str) -> dict[str, bytes]:
    try:
        out = git(top, "cat-file", "--batch", input=b"".join(s.encode() + b"\n" for s in shas), timeout=300)
    except subprocess.TimeoutExpired:
        raise UserError(f"git cat-file did not read the records at {label} within 300 s") from None
    if out.returncode != 0:
        raise UserError(f"git cat-file could not read the records at {label} (a partial clone?): "
                        f"{plain(out.stderr.decode(errors='replace'))[:200]}")
    data, pos, found = out.stdout, 0, {}
    for sha in shas:
        end = data.find(b"\n", pos)
        header = data[pos:end].split(b" ") if end >= 0 else []
        if len(header) != 3 or header[1] != b"blob" or not header[2].isdigit():
            raise UserError(f"git cat-file gave no blob {sha[:12]} at {label}")
        size = int(header[2])
        found[sha] = data[end + 1:end + 1 + size]
        pos = end + 1 + size + 1
    return found


def published_commit(manifest: Manifest, site: Path) -> str | None:
    """The results commit the post names in its provenance (what was last published), or None."""
    slug = manifest.post.slug
    for page in (site / "content" / "posts" / slug / "index.md", site / "content" / "posts" / f"{slug}.md"):
        if page.is_file():
            commit = commit_named_in(read_regular(page, 16 * 1024 * 1024, "post").decode("utf-8", errors="replace"))
            if commit:
                return commit
    return None


# --- comparing -------------------------------------------------------------------------------------------
def _summary(records: list[dict]) -> dict:
    records = [as_record(r) for r in records]
    # what the guest saw, as the posts say it: free -m's total, less an autodeflate balloon's pages
    # (which stay counted in its MemTotal)
    seen = [v for v in (seen_mib(r) for r in records if r.status == "ok" and (r.free_m or {}).get("total")
                        is not None) if v is not None]
    statuses = sorted({r.status for r in records})
    return {"median_mib": statistics.median(seen) if seen else None,
            "spread_mib": (max(seen) - min(seen)) if seen else None,
            "status": "/".join(statuses), "n": len(records),
            "measured_at": sorted(str(r.started_at) for r in records if r.started_at)}


def classify(old: list[dict] | None, new: list[dict] | None) -> tuple[str, dict | None, dict | None]:
    if not old:
        return "added", None, _summary(new)
    if not new:
        return "removed", _summary(old), None
    a, b = _summary(old), _summary(new)
    if a["status"] != b["status"]:
        return "status changed", a, b
    if a["median_mib"] is None or b["median_mib"] is None:
        return "unchanged", a, b
    tolerance = max(1, a["spread_mib"], b["spread_mib"])
    return ("moved" if abs(b["median_mib"] - a["median_mib"]) > tolerance else "unchanged"), a, b


def _provenance(side: Side) -> dict[tuple[str, str], set]:
    """(what, where) -> the values the records say: a guest's kernel, a host's QEMU, libvirt, Xen, kernel."""
    out: dict[tuple[str, str], set] = {}
    for records in side.points.values():
        for r in records:
            host = r.host
            for what, where, value in (("guest kernel", f"{host}/{r.guest}", r.guest_kernel),
                                       ("QEMU", host, r.qemu_version),
                                       ("libvirt", host, r.libvirt_version),
                                       ("Xen", host, (r.xen or {}).get("version")),
                                       ("host kernel", host, r.host_kernel)):
                if value:
                    out.setdefault((what, where), set()).add(str(value))
    return out


def compare_sides(experiment: str, old: Side, new: Side) -> Comparison:
    changes = []
    for key in sorted(set(old.points) | set(new.points)):
        kind, a, b = classify(old.points.get(key), new.points.get(key))
        changes.append(Change(key, kind, a, b))
    before, after = _provenance(old), _provenance(new)
    provenance = [{"what": what, "where": where, "old": sorted(before.get((what, where), ())),
                   "new": sorted(after.get((what, where), ()))}
                  for what, where in sorted(set(before) | set(after))
                  if before.get((what, where), set()) != after.get((what, where), set())
                  and before.get((what, where)) and after.get((what, where))]
    return Comparison(experiment, old, new, changes, provenance)


def compare(manifest: Manifest, old_rev: str | None, new_rev: str | None, *, site: Path,
            results_override: str | None = None, note=print) -> Comparison:
    """Compare a manifest's records at `old_rev` (default: the commit its post last published) with
    `new_rev` (default: the working tree)."""
    folder = results_dir(manifest, results_override).resolve()
    top = git_toplevel(project_root(Path(manifest.path)).resolve())
    if top is None:
        raise UserError(f"{manifest.path}: not in a git repository; compare reads records from git history")
    if not is_inside(folder, top):
        raise UserError(f"{folder}: the results folder is outside the repository {top}")
    rel = os.path.relpath(folder, top)
    if old_rev is None:
        old_rev = published_commit(manifest, site)
        if old_rev is None:
            # a first publication (records and post committed together): the records as last committed
            last = git(top, "log", "-1", "--format=%H", "--", rel).stdout.strip()
            if not last:
                raise UserError(f"{manifest.experiment}: its post in {site} names no results commit and no commit "
                                f"holds {rel} yet; commit the records, or give the revision to compare with: "
                                "compare OLD [NEW]")
            note(f"note: {manifest.experiment}: its post names no results commit (its first publication); "
                 f"comparing with the records as last committed ({last[:12]})")
            old_rev = last
    old_commit = resolve_revision(top, old_rev)
    old = revision_side(top, old_commit, rel, old_commit[:12])
    if new_rev is None:
        new = worktree_side(folder)
    else:
        new_commit = resolve_revision(top, new_rev)
        new = revision_side(top, new_commit, rel, new_commit[:12])
    for side in (old, new):
        if side.missing:
            note(f"note: {manifest.experiment}: {side.missing}")
    return compare_sides(manifest.experiment, old, new)


# --- output ----------------------------------------------------------------------------------------------
def _value(s: dict | None) -> str:
    if s is None:
        return "-"
    if s["median_mib"] is None:
        return s["status"]
    spread = f" ±{s['spread_mib'] / 2:g}" if s["spread_mib"] else ""
    status = "" if s["status"] == "ok" else f" ({s['status']})"
    return f"{s['median_mib']:g}{spread} MiB{status}"


def table(c: Comparison) -> list[str]:
    counts = c.counts
    lines = [f"{c.experiment}: {c.old.label} -> {c.new.label}: {len(c.changes)} point(s): "
             + ", ".join(f"{counts[k]} {k}" for k in CLASSES)]
    order = {k: i for i, k in enumerate(CLASSES)}
    for ch in sorted(c.changes, key=lambda ch: (order[ch.kind], ch.point)):
        if ch.kind == "unchanged":
            if ch.remeasured:  # measured again, with the same reading: say which point, so nothing is hidden
                lines.append(f"  {'re-measured':<15} {ch.point:<44} {_value(ch.old)} -> {_value(ch.new)} (unchanged)")
            continue
        lines.append(f"  {ch.kind:<15} {ch.point:<44} {_value(ch.old)} -> {_value(ch.new)}")
    for p in c.provenance:
        lines.append(f"  {p['what']} on {p['where']}: {', '.join(p['old'])} -> {', '.join(p['new'])}")
    return [plain(line) for line in lines]


def as_json(comparisons: list[Comparison]) -> str:
    return json.dumps({"format": "memballoon-compare", "version": FORMAT_VERSION,
                       "experiments": [c.as_json() for c in comparisons]}, indent=1, sort_keys=True) + "\n"
