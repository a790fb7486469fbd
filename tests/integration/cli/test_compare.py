"""compare through the real CLI and real git: what changed between two revisions of the records."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from generator import results
from generator.manifest import load
from generator.plan import points
from tests.support import ROOT, cli, git  # noqa: F401
from tests.support.sample import MANIFEST, record  # noqa: F401


def compare(cwd, *args):
    return cli("compare", *args, cwd=cwd)


@pytest.fixture
def repo(tmp_path):
    """A project in git with sample records committed (tag 'first'), then four kinds of change
    committed (tag 'second'): one reading moved, one status changed, one point added, one removed."""
    project = tmp_path / "project"
    folder = project / "experiments" / "sample"
    folder.mkdir(parents=True)
    (folder / "post.md").write_text("x\n")
    (folder / "experiment.yaml").write_text(MANIFEST.format(slug="sample", title="t", content="post.md"))
    m = load(folder / "experiment.yaml")
    res = Path(m.results)
    pts = {p.key: p for p in points(m)}
    for key, p in pts.items():
        if p.memory_mib != 8192 or p.guest != "rhel6":  # rhel6 at 8 GiB: added later
            results.write_record(p.record_path(res), {**record(p.guest, p.memory_mib, p.repeat), **p.factors})
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "first; $(touch /tmp/pwned) `id` \x1b]0;title\x07")
    git(project, "tag", "first")

    def rewrite(key, **change):
        path = pts[key].record_path(res)
        rec = json.loads(path.read_text())
        rec.update(change)
        path.write_text(json.dumps(rec))

    for r in (1, 2):  # precise at 4 GiB now sees 20 MiB less: moved
        rec = record("precise", 4096, r)
        rewrite(f"kvm1/precise/m4096-c1024-r{r}", free_m=dict(rec["free_m"], total=rec["free_m"]["total"] - 20),
                memtotal_settled_kib=rec["memtotal_settled_kib"] - 20 * 1024)
    for r in (1, 2):  # rhel6 at 2 GiB is now an oom
        rewrite(f"kvm1/rhel6/m2048-c1024-r{r}", status="oom", reason="Out of memory", free_m=None,
                memtotal_settled_kib=None)
    for r in (1, 2):  # added
        p = pts[f"kvm1/rhel6/m8192-c1024-r{r}"]
        results.write_record(p.record_path(res), {**record("rhel6", 8192, r), **p.factors})
    for r in (1, 2):  # removed
        pts[f"kvm1/precise/m1024-c1024-r{r}"].record_path(res).unlink()
    for r in (1, 2):  # precise at 2 GiB moves by less than its repeats' spread: unchanged
        rec = record("precise", 2048, r)
        rewrite(f"kvm1/precise/m2048-c1024-r{r}", free_m=dict(rec["free_m"], total=rec["free_m"]["total"] - 1))
    git(project, "add", "-A")
    git(project, "commit", "-qm", "second")
    git(project, "tag", "second")
    return project


EXPECTED = {"kvm1/precise/m4096-c1024": "moved", "kvm1/rhel6/m2048-c1024": "status changed",
            "kvm1/rhel6/m8192-c1024": "added", "kvm1/precise/m1024-c1024": "removed"}


def test_two_revisions_are_classified_from_git_objects(repo):
    status_before = git(repo, "status", "--porcelain")
    out = compare(repo, "first", "second", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["format"] == "memballoon-compare" and data["version"] == 1
    [exp] = data["experiments"]
    assert {p["point"]: p["class"] for p in exp["points"]} == EXPECTED
    moved = next(p for p in exp["points"] if p["class"] == "moved")
    assert moved["old"]["median_mib"] - moved["new"]["median_mib"] == 20 and moved["old"]["spread_mib"] == 3
    assert exp["counts"]["unchanged"] == 10 - 4 + 0  # 5 sizes x 2 guests, less the four that changed
    assert git(repo, "status", "--porcelain") == status_before  # nothing written, no checkout


def test_the_working_tree_is_the_default_new_side_and_the_table_says_the_same(repo):
    out = compare(repo, "first")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "1 moved, 1 status changed, 1 added, 1 removed, 6 unchanged" in lines[0]
    for point, kind in EXPECTED.items():
        assert any(line.split()[0:len(kind.split())] == kind.split() and point in line for line in lines[1:]), point
    assert any("841.5 ±1.5 MiB -> 821.5 ±1.5 MiB" in line for line in lines)  # medians of 843 and 840


def test_fail_on_change_for_ci(repo):
    assert compare(repo, "first", "second", "--fail-on-change").returncode == 1
    same = compare(repo, "second", "second", "--fail-on-change")
    assert same.returncode == 0 and "0 moved, 0 status changed, 0 added, 0 removed" in same.stdout


def test_provenance_changes_are_listed(repo):
    folder = repo / "experiments" / "sample" / "results"
    for path in folder.rglob("*.json"):
        rec = json.loads(path.read_text())
        rec["qemu_version"] = "9.0.0"
        path.write_text(json.dumps(rec))
    out = compare(repo, "second")
    assert "QEMU on kvm1: 8.2.0 -> 9.0.0" in out.stdout


@pytest.mark.parametrize("rev, says", [("nosuch", "revision 'nosuch' does not exist"),
                                       ("--upload-pack=x", "is not a git revision"),
                                       ("HEAD;id", "is not a git revision"),
                                       ("HEAD^{tree}", "revision 'HEAD^{tree}' is a tree, not a commit")])
def test_revisions_that_cannot_be_read_are_one_line(repo, rev, says):
    out = compare(repo, "--", rev)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and says in out.stderr, out.stderr


def test_a_shallow_clone_says_so(repo, tmp_path):
    clone = tmp_path / "shallow"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{repo}", str(clone)], check=True)
    first = git(repo, "rev-parse", "first").strip()
    out = compare(clone, first)
    assert out.returncode == 1 and "shallow" in out.stderr and "git fetch --unshallow" in out.stderr


def test_a_moved_results_folder_is_said_once(repo):
    git(repo, "mv", "experiments/sample/results", "experiments/sample/records")
    manifest = repo / "experiments" / "sample" / "experiment.yaml"
    manifest.write_text(manifest.read_text() + "results: records\n")
    out = compare(repo, "first")
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("no records in experiments/sample/records at") == 1
    assert "0 moved, 0 status changed, 9 added, 0 removed" in out.stdout


def test_old_schema_records_compare_through_the_migrations(repo):
    """Version-1 records (memory and currentMemory only) at the old revision read as the same points."""
    folder = repo / "experiments" / "sample" / "results"
    for path in folder.rglob("*.json"):
        rec = json.loads(path.read_text())
        for k in ("memory_model", "autodeflate", "free_page_reporting"):
            rec.pop(k)
        rec["schema_version"] = 1
        path.write_text(json.dumps(rec))
    git(repo, "commit", "-qam", "as schema 1")
    git(repo, "tag", "old-schema")
    git(repo, "checkout", "-q", "second", "--", ".")
    out = compare(repo, "old-schema", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["experiments"][0]["points"] == []


def test_the_default_old_side_is_the_published_commit(repo):
    """Without revisions, compare reads the commit the post names in its provenance."""
    site = repo / "site"
    page = site / "content" / "posts" / "sample" / "index.md"
    page.parent.mkdir(parents=True)
    first = git(repo, "rev-parse", "first").strip()
    page.write_text(f"- Raw results: 18 JSON records in `experiments/sample/results`, git commit `{first[:12]}`.\n")
    out = compare(repo)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"sample: {first[:12]} -> working tree") and "1 moved" in out.stdout
    page.unlink()  # a first publication: the post names no commit; the records as last committed are the old side
    second = git(repo, "rev-parse", "second").strip()
    out = compare(repo)
    assert out.returncode == 0, out.stderr
    assert "names no results commit (its first publication)" in out.stderr and second[:12] in out.stderr
    assert out.stdout.startswith(f"sample: {second[:12]} -> working tree") and "0 moved" in out.stdout


def test_a_point_measured_again_with_the_same_reading_is_named(repo):
    """'unchanged' hides nothing: a point whose boots are new (other start times) is listed as re-measured."""
    folder = repo / "experiments" / "sample" / "results"
    path = next(folder.rglob("memory-4096MiB-current-1024MiB-r1.json"))
    rec = json.loads(path.read_text())
    rec["started_at"] = "2020-01-01T00:00:00+00:00"
    path.write_text(json.dumps(rec))
    out = compare(repo, "second")
    assert out.returncode == 0, out.stderr
    [line] = [x for x in out.stdout.splitlines() if "re-measured" in x]
    assert "/m4096-c1024" in line and line.endswith("(unchanged)")
    doc = json.loads(compare(repo, "second", "--json").stdout)
    assert [p["remeasured"] for p in doc["experiments"][0]["points"]] == [True]


def _fanout_commit(repo: Path, levels: int = 11) -> str:
    """A commit whose results folder holds one ~4 MiB record blob under 2^(levels+1) paths: a few KB of
    trees that name the one below twice (85 objects for 11 levels), gigabytes if every path were read."""
    def run(*args, input=None):
        return subprocess.run(["git", "-C", str(repo), *args], input=input, capture_output=True, check=True).stdout

    rec = record("precise", 1024, 1)
    rec["console_excerpt"] = ["x" * 1000] * (4 * 1024 - 8)  # just under the 4 MiB a record may have
    blob = run("hash-object", "-w", "--stdin", input=json.dumps(rec).encode()).decode().strip()
    tree = run("mktree", input=f"100644 blob {blob}\ta.json\n100644 blob {blob}\tb.json\n".encode()).decode().strip()
    for _ in range(levels):
        tree = run("mktree", input=f"040000 tree {tree}\ta\n040000 tree {tree}\tb\n".encode()).decode().strip()
    for name in ("results", "sample", "experiments"):  # experiments/sample/results/<the fan-out>
        tree = run("mktree", input=f"040000 tree {tree}\t{name}\n".encode()).decode().strip()
    return run("commit-tree", tree, "-m", "fan-out").decode().strip()


def test_a_fanned_out_history_is_bounded(repo):
    """compare of a history whose trees name one large record thousands of times reads it once: one
    line or a comparison, within time and memory (the limit is what the process may map)."""
    import resource
    import time

    commit = _fanout_commit(repo)
    t0 = time.monotonic()
    out = subprocess.run(["bash", "-c", 'ulimit -v 1500000; exec "$@"', "x", "python3", "-m", "generator",
                          "compare", commit, "second"], cwd=repo, capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert time.monotonic() - t0 < 120
    assert "Traceback" not in out.stderr and "MemoryError" not in out.stderr, out.stderr[-2000:]
    assert out.returncode in (0, 1), out.stderr
    if out.returncode == 1:
        assert out.stderr.strip().count("\n") == 0, out.stderr
    del resource


def test_copies_and_misfiled_records_are_not_more_repeats(repo):
    """A record copied beside itself, or filed under another point's name, is not counted."""
    folder = repo / "experiments" / "sample" / "results"
    one = next(folder.rglob("*-r1.json"))
    rec = json.loads(one.read_text())  # counted as repeats, these would move the point's median by 100 MiB
    rec["free_m"] = dict(rec["free_m"], total=rec["free_m"]["total"] - 100)
    for name in ("copy.json", one.name.replace("-r1.json", "-r9.json"), one.name.replace("-r1.json", "-r3.json")):
        (one.parent / name).write_text(json.dumps(rec))
    from generator.publish.compare import worktree_side

    side = worktree_side(folder)
    assert side.stray == 3 and side.count == len(list(folder.rglob("*.json"))) - 3
    assert all(len(recs) <= 2 for recs in side.points.values())  # two repeats per point, as measured
    out = compare(repo, "second", "--json")
    assert out.returncode == 0, out.stderr
    [exp] = json.loads(out.stdout)["experiments"]
    assert not [p for p in exp["points"] if p["class"] != "unchanged"], exp["points"]
