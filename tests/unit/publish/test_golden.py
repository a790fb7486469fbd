"""The committed posts rebuild byte for byte from the committed records."""
from __future__ import annotations

import shutil

from generator.manifest import find_manifests, load
from generator.publish.build import build_all
from tests.support import ROOT  # noqa: F401


def test_committed_posts_rebuild_byte_for_byte(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(ROOT / "site", site, ignore=shutil.ignore_patterns(
        "content", "static", "previews", "claims", "public", ".memballoon-build.json", "resources"))
    # the published pages are where a rebuild finds their "What changed" entries: copy them in first
    for page in (ROOT / "site" / "content" / "posts").glob("*/index.md"):
        target = site / page.relative_to(ROOT / "site")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(page, target)
    manifests = [load(p) for p in find_manifests(ROOT / "experiments")]
    assert len(manifests) >= 3
    (site / "previews").mkdir()  # as in the project's site: previews are written where the folder exists
    build_all(manifests, site=site, clean=True, quiet=True)
    golden = sorted(p.relative_to(ROOT / "site") for folder in ("content/posts", "previews", "claims")
                    for p in (ROOT / "site" / folder).rglob("*") if p.is_file())
    built = sorted(p.relative_to(site) for folder in ("content/posts", "previews", "claims")
                   for p in (site / folder).rglob("*") if p.is_file())
    assert built == golden, "the build writes other files than the committed ones"
    differ = [str(rel) for rel in golden if (site / rel).read_bytes() != (ROOT / "site" / rel).read_bytes()]
    assert not differ, f"these differ from the committed posts: {differ}"
