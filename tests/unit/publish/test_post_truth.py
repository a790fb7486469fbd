"""The posts' sentences follow the records: change a record, and the sentence changes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from generator.manifest import load
from generator.publish.build import build_all
from tests.support import ROOT  # noqa: F401
from tests.support.sample import new_site  # noqa: F401


def project(tmp_path: Path, experiment: str) -> Path:
    proj = tmp_path / "proj"
    shutil.copytree(ROOT / "experiments" / experiment, proj / "experiments" / experiment)
    shutil.copytree(ROOT / "content", proj / "content")
    return proj / "experiments" / experiment / "experiment.yaml"


def page(path: Path, tmp_path: Path, name: str) -> str:
    m = load(path, check_files=False)
    site = new_site(tmp_path, name)
    build_all([m], site=site, quiet=True)
    return " ".join((site / "content" / "posts" / m.post.slug / "index.md").read_text().split())  # one line


def edit(path: Path, **changes) -> None:
    rec = json.loads(path.read_text())
    rec.update(changes)
    path.write_text(json.dumps(rec, indent=1))


def test_the_fix_autodeflate_sentence_follows_the_records(tmp_path):
    manifest = project(tmp_path, "the-fix")
    before = page(manifest, tmp_path, "a")
    assert "squeezed to 256 MiB survived at 4 GiB and 16 GiB" in before
    results = manifest.parent / "results" / "local" / "debian"
    edit(results / "memory-4096MiB-current-256MiB-autodeflate-r1.json", status="oom",
         reason="Out of memory: Killed process 9 (usleep)", memtotal_settled_kib=None, free_m=None, meminfo=None)
    after = page(manifest, tmp_path, "b")
    assert "squeezed to 256 MiB survived at 16 GiB, where" in after
    assert "survived at 4 GiB and 16 GiB" not in after


def test_how_low_names_what_the_oom_killer_killed(tmp_path):
    manifest = project(tmp_path, "how-low")
    before = page(manifest, tmp_path, "a")
    reasons = [json.loads(p.read_text()).get("reason", "") for p in (manifest.parent / "results").rglob("*.json")]
    usleep = sum(1 for r in reasons if "(usleep)" in r)
    assert usleep and f"it killed `usleep` in {usleep}" in before
    for path in (manifest.parent / "results").rglob("*.json"):
        rec = json.loads(path.read_text())
        if rec["status"] == "oom":
            edit(path, reason="Out of memory: Killed process 1 (init) total-vm:2260kB")
    after = page(manifest, tmp_path, "b")
    assert "it killed `init` in" in after and "`usleep`" not in after.split("## The condition")[0]


def test_the_loss_per_gib_in_the_summary_is_the_fit(tmp_path):
    manifest = project(tmp_path, "the-fix")
    before = page(manifest, tmp_path, "a")
    results = manifest.parent / "results" / "local" / "debian"
    first = json.loads((results / "memory-1024MiB-current-1024MiB-r1.json").read_text())["free_m"]["total"]
    path = results / "memory-16384MiB-current-1024MiB-r1.json"
    rec = json.loads(path.read_text())
    lost = first - rec["free_m"]["total"]
    edit(path, memtotal_settled_kib=rec["memtotal_settled_kib"] - 100 * 1024,
         free_m=dict(rec["free_m"], total=rec["free_m"]["total"] - 100))
    after = page(manifest, tmp_path, "b")
    assert f"the ballooned one {lost} MiB" in before and f"the ballooned one {lost + 100} MiB" in after
