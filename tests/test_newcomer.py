"""A newcomer's first hour (issue 19): a guest measured at some sizes only, a misspelt Debian suite
caught by validate, a post without a content file, a build without data, and a post built into a
Hugo blog of one's own."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from generator import results
from generator.errors import ManifestError
from generator.manifest import load
from generator.plan import points
from generator.publish.build import build_all, state_path

from test_build import HUGO, MANIFEST, SEEN, hugo, new_site, record  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=ROOT, env=None):
    return subprocess.run([sys.executable, "-m", "generator", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


# --- a guest at some sizes only ---------------------------------------------------------------------
NARROW = """\
experiment: narrow
hosts: [{{name: local, uri: embedded, domain_type: qemu}}]
guests:
  - name: small
  - name: big
    sweep: {{memory: {big}}}
sweep: {{memory: [1 GiB, 2 GiB, 4 GiB], current_memory: [512 MiB, 1 GiB]}}
post: {{slug: narrow, title: Narrow}}
"""


def test_a_guests_sweep_narrows_its_points_only(write_manifest):
    m = load(write_manifest(text=NARROW.format(big="[4 GiB]")))
    got = sorted((p.guest, p.memory_mib, p.current_memory_mib) for p in points(m))
    assert [g for g in got if g[0] == "small"] == [("small", m_, c) for m_ in (1024, 2048, 4096)
                                                   for c in (512, 1024)]
    assert [g for g in got if g[0] == "big"] == [("big", 4096, 512), ("big", 4096, 1024)]


def test_a_guests_sweep_outside_the_manifests_is_one_line(write_manifest, tmp_path):
    with pytest.raises(ManifestError) as e:
        load(write_manifest(text=NARROW.format(big="[4 GiB, 16 GiB]")))
    assert e.value.problems == ["guests[1].sweep.memory: memory 16384 MiB not in sweep.memory (memory 1024 MiB, "
                                "memory 2048 MiB, memory 4096 MiB); a guest's values narrow the manifest's sweep: "
                                "add them there too"]
    with pytest.raises(ManifestError) as e:
        load(write_manifest(text=NARROW.format(big="[4 GiB]").replace("sweep: {memory", "sweep: {memroy", 1)))
    assert e.value.problems == ["guests[1].sweep.memroy: not a factor; did you mean 'memory'?"]


def test_status_lists_only_a_guests_own_points(write_manifest):
    path = write_manifest(text=NARROW.format(big="[4 GiB]"))
    out = run("status", str(path))
    assert out.returncode == 0, out.stderr
    assert "big/m4096" in out.stdout and "big/m1024" not in out.stdout and "big/m2048" not in out.stdout
    assert "small/m1024" in out.stdout


# --- suites are the mirror's answer -----------------------------------------------------------------
def test_a_misspelt_debian_suite_is_caught_by_validate(write_manifest, tmp_path):
    text = NARROW.format(big="[4 GiB]").replace("  - name: small\n", "  - name: small\n    kernel: debian:bookwrom\n")
    path = write_manifest(text=text)
    out = run("validate", str(path), env={"MEMBALLOON_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"error: {path}: guests[0].kernel: the Debian mirror http://deb.debian.org/debian has no suite 'bookwrom' "
        "(no dists/bookwrom/Release); did you mean 'debian:bookworm'?"]
    good = write_manifest(name="good", text=text.replace("bookwrom", "bookworm"))
    out = run("validate", str(good), env={"MEMBALLOON_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr
    assert list((tmp_path / "cache" / "suites").glob("*/bookworm"))  # asked once, then remembered


def test_an_unreachable_mirror_is_not_a_guess(write_manifest, tmp_path):
    """No answer from the mirror is not a problem of the manifest: validate passes, and a sweep would
    show apt's own error."""
    text = NARROW.format(big="[4 GiB]").replace("  - name: small\n", "  - name: small\n    kernel: debian:bookwrom\n")
    out = run("validate", str(write_manifest(text=text)),
              env={"MEMBALLOON_CACHE": str(tmp_path / "cache"), "MEMBALLOON_DEBIAN_MIRROR": "http://127.0.0.1:9/debian"})
    assert out.returncode == 0, out.stderr


# --- a post without prose of its own, and without data ----------------------------------------------
def sample_without_content(tmp_path, with_records=True):
    folder = tmp_path / "mine"
    folder.mkdir()
    text = MANIFEST.format(slug="mine", title="Mine", content="x").replace("  content: x\n", "")
    (folder / "experiment.yaml").write_text(text)
    if with_records:
        for guest in SEEN:
            for memory in (1024, 2048, 4096, 8192, 32768):
                results.write_record(folder / "results" / "kvm1" / guest /
                                     f"memory-{memory}MiB-current-1024MiB-r1.json", record(guest, memory, 1))
    return folder / "experiment.yaml"


def test_a_manifest_without_content_gets_the_default_post(tmp_path):
    m = load(sample_without_content(tmp_path))
    site = new_site(tmp_path)
    build_all([m], site=site, quiet=True)
    text = (site / "content/posts/mine/index.md").read_text()
    pngs = sorted(p.name for p in (site / "content/posts/mine").glob("*.png"))
    assert len(pngs) >= 3
    for name in pngs:  # every graph drawn is shown
        assert f"]({name} " in text
    assert "| host | hypervisor | guest | memory |" in text  # the results table
    assert "## How this was measured" in text and "libvirt 10.0.0" in text
    assert "sees 961 MiB at memory 1 GiB and 773 MiB at 8 GiB" in text  # the answer, from the records
    assert "draft" not in text.split("+++")[1]
    assert 'Description = ' in text and 'menu = "blog"' in text
    hugo(site)


def test_a_build_without_data_warns_and_writes_a_draft(tmp_path):
    path = sample_without_content(tmp_path, with_records=False)
    site = new_site(tmp_path)
    out = run("build", str(path), "--site", str(site), env={"MEMBALLOON_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr
    warning = [ln for ln in out.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warning) == 1 and "no measured point" in warning[0] and "draft" in warning[0], out.stderr
    front = (site / "content/posts/mine/index.md").read_text().split("+++")[1]
    assert "draft = true" in front
    public = hugo(site)
    assert not (public / "posts" / "mine").exists()  # Hugo does not publish it


# --- my own blog ------------------------------------------------------------------------------------
def tracked_state() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout


@pytest.mark.skipif(not HUGO, reason="needs hugo (make install)")
def test_building_into_a_fresh_hugo_site_leaves_its_root_and_the_project_clean(tmp_path):
    blog = tmp_path / "blog"
    subprocess.run([HUGO, "new", "site", str(blog)], check=True, capture_output=True)
    root_before = sorted(p.name for p in blog.iterdir())
    path = sample_without_content(tmp_path)
    project_before = tracked_state()
    cache = tmp_path / "cache"
    out = run("build", str(path), "--site", str(blog), env={"MEMBALLOON_CACHE": str(cache)})
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in blog.iterdir()) == root_before  # no previews/, no state file in the blog
    assert (blog / "content/posts/mine/index.md").is_file()
    assert state_path.__name__ and list((cache / "build").glob("blog-*.json"))
    again = run("build", str(path), "--site", str(blog), env={"MEMBALLOON_CACHE": str(cache)})
    assert "0 written" in again.stderr, again.stderr  # the state in the cache is used
    assert tracked_state() == project_before
    built = subprocess.run([HUGO, "--source", str(blog), "--quiet"], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr


def test_a_folder_that_is_not_a_hugo_site_is_one_line(tmp_path):
    path = sample_without_content(tmp_path)
    (tmp_path / "nosite").mkdir()
    out = run("build", str(path), "--site", str(tmp_path / "nosite"))
    assert out.returncode == 1 and out.stderr.strip().count("\n") == 0
    assert "not a Hugo site (no hugo.toml or config.toml)" in out.stderr


def test_the_readme_minimal_post_builds(tmp_path):
    """The minimal post the README shows, as written there, builds a page with its answer first."""
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"A post of your own can start.*?```markdown\n(.*?)```", readme, re.S).group(1)
    path = sample_without_content(tmp_path)
    (path.parent / "mine.md").write_text(example)
    path.write_text(path.read_text().replace("  slug: mine\n", "  slug: mine\n  content: mine.md\n"))
    site = new_site(tmp_path)
    build_all([load(path)], site=site, quiet=True)
    text = (site / "content/posts/mine/index.md").read_text()
    body = text.split("+++\n", 2)[2].lstrip()
    assert body.startswith("At memory 32 GiB the guest saw") or body.startswith("At memory 8 GiB the guest saw")
    assert 'Description = "At memory' in text and "](mine-memory-lost.png " in text
    hugo(site)
