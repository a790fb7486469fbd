"""Pages the build writes, rendered by the real Hugo."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from generator import audit as au
from generator import results
from generator.manifest import load
from generator.plan import points
from generator.publish.build import build_all, state_path
from tests.support import ROOT, cli, git  # noqa: F401
from tests.support.audit import host, model  # noqa: F401
from tests.support.fake_libvirt import GIB, FakeDomain
from tests.support.sample import HUGO, MANIFEST, hugo, new_site, record, sample, sample_without_content  # noqa: F401


def xen_record(guest: str, memory: int, repeat: int) -> dict:
    """A PV guest's record: the map Linux gives it stops at 11 GiB (ten times 1 GiB beyond it)."""
    rec = record(guest, memory, repeat)
    map_end = min(memory, 11 * 1024) * 1024 * 1024
    seen = {1024: 957, 2048: 938, 4096: 893, 8192: 807}.get(memory, 734)
    return dict(rec, host="xen1", domain_type="xen", domain_type_reason="the host runs Xen", hypervisor="Xen 4.17.0",
                qemu_version=None, balloon_model="xen", status="ok", reason="",
                memtotal_settled_kib=seen * 1024, free_m={"total": seen},
                xen={"version": "4.17.5", "total_mib": 4095}, host_memory_mib=4095, host_cores=1,
                host_kernel="6.1.0-50-amd64",
                nested={"outer": "QEMU 7.2.22 (TCG) on this machine", "cpu_model": "Haswell-noTSX", "cpus": 1,
                        "memory_mib": 4096, "dom0_memory_mib": 1024, "dom0_suite": "bookworm"},
                xen_balloon={"target_kb": 1048576, "current_kb": 1048576, "low_kb": map_end // 1024 - 1048576,
                             "high_kb": 0},
                dmesg=[f"[    0.0] Xen: [mem 0x0000000000100000-0x{map_end - 1:016x}] usable",
                       f"[    9.3] Memory: 815668K/8388220K available (14343K kernel code, "
                       f"{(map_end // 1024 - 1048576) + 300 * 1024}K reserved)"])


def tracked_state() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout


XSS = ['<script>alert(1)</script>', '<img src=x onerror=alert(2)>', '[click](javascript:alert(3))',
       '<a href="javascript:alert(4)">x</a>', '`code` | pipe [link](http://evil.example/)']


HOSTILE_HUGO = ["{{< youtube x >}}", "{{% param title %}}", "{{</* youtube y */>}}", "{{< param title >}}",
                "*emph* _under_ ~~strike~~", "<!--more-->", "half {{<", "{{%"]


def test_the_audit_page_escapes_and_hugo_builds_it(model, tmp_path):
    import shutil

    from generator.publish.audit_page import write_page
    from tests.support.sample import hugo

    site = tmp_path / "site"
    shutil.copytree(ROOT / "site", site, ignore=shutil.ignore_patterns("content", "static", "previews", "public",
                                                                       "resources"))
    doms = [FakeDomain("web{{< x >}}|<b>", 16 * GIB, 1 * GIB, 633 * 1024, kernel="6.1.0-56-amd64"),
            FakeDomain("nostats", 8 * GIB, 1 * GIB, None, period=None)]
    hosts = au.audit([host(doms)[0]], model, au.Options())
    write_page(hosts, model, site, "my-hosts")
    page = (site / "content/audits/my-hosts/index.md").read_text()
    assert "{{<" not in page and "<b>" not in page and "what it sees is unknown" in page
    assert (site / "content/audits/my-hosts/my-hosts.png").read_bytes()[:4] == b"\x89PNG"
    public = hugo(site)
    html = (public / "audits/my-hosts/index.html").read_text()
    assert "<b>" not in html and "my-hosts.png" in html


def test_sample_site_builds_with_hugo(sample, tmp_path):
    m = sample()
    site = new_site(tmp_path)
    report = build_all([m], site=site, quiet=True)
    bundle = site / "content/posts/sample"
    # only the graphs the page shows are drawn: the all-guests graph is not shown by this post
    assert sorted(p.name for p in bundle.iterdir()) == [
        "index.md", "kvm-precise-1024.png", "kvm-rhel6-1024.png", "sample-memory-lost.png"]
    assert len(report.written) == 6  # + the preview and the claims (site/claims/sample.json)
    text = (bundle / "index.md").read_text()
    fm = tomllib.loads(re.match(r"\A\+\+\+\n(.*?)\n\+\+\+\n", text, re.S).group(1))
    # the description is the post's summary, from the records
    # (the sample's boots are not itemized: no kernel's rule, so no cost per GiB is claimed)
    assert fm["Description"].startswith("With currentMemory held at 1024 MiB, the larger a guest's memory ceiling, "
                                        "the less of it the guest could use on KVM: at 8 GiB the Ubuntu "
                                        "Precise guest saw 772 MiB of its 1024. From 32 GiB on, no KVM guest survived")
    assert {k: v for k, v in fm.items() if k != "Description"} == {
        "Categories": ["sysadm"], "Tags": ["memory", "kvm"], "date": "2026-11-20T10:00:00+00:00", "menu": "blog",
        "title": "Where did my memory go?", "aliases": ["/post/sample-old/"]}
    body = text.split("+++\n", 2)[2]
    assert body.lstrip().startswith("With `currentMemory` held at 1024 MiB")  # the answer comes first
    public = hugo(site)
    html = (public / "posts/sample/index.html").read_text()
    assert "<title>Where did my memory go?" in html
    images = re.findall(r'<img src="?([^" >]+)"?', html)
    assert sorted(images) == ["kvm-precise-1024.png", "kvm-rhel6-1024.png", "sample-memory-lost.png"]
    for src in images:
        assert (public / "posts/sample" / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cells = re.findall(r"<td[^>]*>(.*?)</td>", html)
    # the pivoted table: precise at 4 GiB, repeats 843 and 840 -> median 841.5 shown as 842, lost 182
    assert "842 (182)" in cells and "960 (64)" in cells
    assert "<strong>OOM</strong>" in cells and "<strong>refused</strong>" in cells
    assert (public / "post/sample-old/index.html").exists()  # the alias redirects
    assert "Ubuntu Precise" in html and "RHEL6" in html
    assert "KVM, Ubuntu Precise, currentMemory 1024 MiB" in html
    # failures are data: each told once, with where and how often
    assert "memory 32 GiB, currentMemory 1024 MiB, kvm1/precise (×2): <strong>oom</strong>" in html
    assert "kvm1/rhel6 (×2): <strong>refused</strong>" in html
    # the guests that died are explained from their own records: set aside at boot, how far the balloon got
    assert "From 32 GiB, no KVM guest survives" in html
    assert ["32 GiB", "Ubuntu Precise", "1,100 MiB", "1,759 MiB", "<strong>OOM</strong>"] in \
        [cells[i:i + 5] for i in range(len(cells))]
    # the guest's last words are its own text: shown in a code span, never as markup
    assert "<script>" not in html and "&lt;script&gt;x()" in html
    assert "guests died from 32 GiB (crosses at the top)" in html  # the lost graph's alt text
    assert all(len(alt) < 300 for alt in re.findall(r'alt="([^"]*)"', html))


def test_static_layout_like_the_original(sample, tmp_path):
    m = sample()
    site = new_site(tmp_path)
    build_all([m], site=site, quiet=True, layout="static")
    text = (site / "content/posts/sample.md").read_text()
    assert "](/img/kvm-precise-1024.png" in text
    assert (site / "static/img/kvm-rhel6-1024.png").exists()
    public = hugo(site)
    assert (public / "img/kvm-precise-1024.png").exists()
    assert '<img src=/img/kvm-precise-1024.png' in (public / "posts/sample/index.html").read_text().replace('"', "")


def test_missing_results_render_a_no_data_notice(sample, tmp_path):
    m = sample(with_records=False)
    site = new_site(tmp_path)
    build_all([m], site=site, quiet=True)
    text = (site / "content/posts/sample/index.md").read_text()
    assert "**No data yet.**" in text and "0 of 20 points recorded" in text
    assert not list((site / "content/posts/sample").glob("*.png"))
    hugo(site)


def test_a_xen_host_gets_its_graphs_a_comparison_and_its_section(sample, tmp_path):
    m = sample()
    path = Path(m.path)
    path.write_text(path.read_text().replace(
        "hosts: [{name: kvm1, uri: 'qemu+ssh://root@kvm1.example.org/system', domain_type: kvm}]",
        "hosts: [{name: kvm1, uri: 'qemu+ssh://root@kvm1.example.org/system', domain_type: kvm},\n"
        "        {name: xen1, kind: nested-xen}]\nballoon: {model: auto}"))
    for memory in (1024, 2048, 4096, 8192, 32768):
        for repeat in (1, 2):
            results.write_record(path.parent / "results" / "xen1" / "precise" /
                                 f"memory-{memory}MiB-current-1024MiB-r{repeat}.json", xen_record("precise", memory, repeat))
    site = new_site(tmp_path)
    build_all([load(path)], site=site, quiet=True)
    bundle = site / "content/posts/sample"
    names = sorted(p.name for p in bundle.iterdir())
    # named like 2012's graphs: the hypervisor, not the host, since each host runs another one
    assert {"kvm-precise-1024.png", "compare-precise-1024.png"} <= set(names)
    assert "compare-rhel6-1024.png" not in names  # rhel6 ran on one hypervisor only
    assert "xen-precise-1024.png" not in names  # the comparison shows it; nothing in a bundle that no page shows
    text = (bundle / "index.md").read_text()
    assert "## On Xen" in text and "ran **nested**" in text
    assert "| 32 GiB | 11 GiB | 10,240 | 734 | none |" in text  # the map's end, in the appendix
    assert "On Xen (nested in QEMU) the loss stopped growing at 32 GiB" in text  # in the summary
    assert "from 16 GiB on, the map ends at 11 GiB" not in text  # no 16 GiB point in this sample
    assert "from 32 GiB the map ends at 11 GiB" in text
    assert "Xen 4.17.5 (1 CPU, 4.0 GiB)" in text and "`Haswell-noTSX`" in text
    # the prose follows the manifest's first host and guest, though Xen measured more points of it
    # (kvm1/precise: 961 and 958 MiB at 1 GiB, last measured 8 GiB; xen1/precise: 957 MiB, measured to 32 GiB)
    assert "the guest sees **960 MiB** of 1024" in text and "8 GiB the guest is **252 MiB** short" in text
    # the default post's results table: a PV kernel's reserved count without the unpopulated part of its map
    path.write_text(path.read_text().replace("  content: post.md\n", ""))
    build_all([load(path)], site=site, quiet=True)
    text = (bundle / "index.md").read_text()
    assert "| xen1 | Xen | Ubuntu Precise | 32 GiB | 1024 MiB | 734 | 290 | 300 | 2 | ok |" in text
    assert "the part of its memory map that Xen never populated" in text
    assert "xen-precise-1024.png" in {p.name for p in bundle.iterdir()}  # the default post shows every graph
    html = (hugo(site) / "posts/sample/index.html").read_text()
    assert "compare-precise-1024.png" in html and "xen-precise-1024.png" in html


@pytest.mark.skipif(not HUGO, reason="needs hugo (make install)")
def test_building_into_a_fresh_hugo_site_leaves_its_root_and_the_project_clean(tmp_path):
    blog = tmp_path / "blog"
    subprocess.run([HUGO, "new", "site", str(blog)], check=True, capture_output=True)
    root_before = sorted(p.name for p in blog.iterdir())
    path = sample_without_content(tmp_path)
    project_before = tracked_state()
    cache = tmp_path / "cache"
    out = cli("build", str(path), "--site", str(blog), env={"MEMBALLOON_CACHE": str(cache)})
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in blog.iterdir()) == root_before  # no previews/, no state file in the blog
    assert (blog / "content/posts/mine/index.md").is_file()
    assert state_path.__name__ and list((cache / "build").glob("blog-*.json"))
    again = cli("build", str(path), "--site", str(blog), env={"MEMBALLOON_CACHE": str(cache)})
    assert "0 written" in again.stderr, again.stderr  # the state in the cache is used
    assert tracked_state() == project_before
    built = subprocess.run([HUGO, "--source", str(blog), "--quiet"], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr


def test_guest_controlled_record_text_cannot_run_in_the_preview_or_hugo(sample, tmp_path):
    m = sample()
    for path in Path(m.results).rglob("*.json"):
        rec = results.read_record(path)
        rec["guest_kernel"] = XSS[0] + XSS[2]
        if rec["status"] != "ok":
            rec["reason"] = XSS[1] + " " + XSS[3] + " " + XSS[4]
        results.write_record(path, rec)
    site = new_site(tmp_path)
    build_all([m], site=site, quiet=True)
    preview = (site / "previews/sample.html").read_text()
    public = hugo(site)
    page = (public / "posts/sample/index.html").read_text()
    for html in (preview, page):
        assert not re.search(r"<script", html, re.I) and not re.search(r"<[a-z]+[^>]*\son[a-z]+=", html, re.I)
        assert not re.search(r"""<[a-z]+[^>]*\s(href|src)=["']?javascript:""", html, re.I)
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown as text, not dropped silently


def test_hugo_shortcodes_and_emphasis_from_records_and_manifests_stay_text(sample, tmp_path):
    """Shortcodes in a guest's reason (a code span and plain text), a guest kernel and a manifest's
    label reach the page; Hugo builds it (no unknown or half-cut shortcode fails it) and shows them as
    the literal text they were: no iframe, no site title, no emphasis."""
    m = sample()
    manifest = Path(m.path)
    hostile = " ".join(HOSTILE_HUGO)
    manifest.write_text(manifest.read_text().replace("label: RHEL6", f"label: {json.dumps(hostile)}")
                        .replace("description: Sample post built from sample records.",
                                 "description: " + json.dumps("{{% param title %}} Sample post")))
    m = load(manifest)
    for path in Path(m.results).rglob("*.json"):
        rec = results.read_record(path)
        rec["guest_kernel"] = "6.1.0-{{< youtube k >}}"
        if rec["status"] != "ok":  # shown in a code span (the failures list) and as text (the prose)
            rec["reason"] = hostile + " {{% x %}} {{<"
        results.write_record(path, rec)
    site = new_site(tmp_path)
    config = site / "hugo.toml"
    config.write_text(config.read_text().replace('title = "Where did my memory go?"', 'title = "Site title marker"'))
    build_all([m], site=site, quiet=True)
    page_md = (site / "content/posts/sample/index.md").read_text()
    body = page_md.split("+++", 2)[2]
    assert "{{<" not in body and "{{%" not in body and "<!--more-->" not in body
    assert "{\u200b{< youtube x >}}" in page_md and "\\{\\{&lt; youtube x &gt;}}" in page_md  # code span, text
    public = hugo(site)  # --panicOnWarning: an unknown shortcode or a half-cut one would fail here
    html = (public / "posts/sample/index.html").read_text()
    assert "<iframe" not in html and "youtube.com" not in html and "youtube-nocookie" not in html
    assert "<em>emph</em>" not in html and "<em>under</em>" not in html and "<del>strike</del>" not in html
    text = html.replace("\u200b", "").replace("&lt;", "<").replace("&gt;", ">").replace("&#34;", '"')
    for bad in HOSTILE_HUGO + ["6.1.0-{{< youtube k >}}"]:
        assert bad in text, bad
    assert "{{% x %}} {{<" in text
    # the label and the reason do not print the site's title ({{% param title %}} would)
    article = html[html.index("<article>"):html.index("</article>")]
    assert "Site title marker" not in article and "Site title marker" in html


def test_a_post_is_dated_by_a_checked_record_and_hugo_shows_it(sample, tmp_path):
    """The latest started_at dates a post without post.date; a date in the future (which Hugo would
    drop silently) is refused above, so the post Hugo builds is there."""
    m = sample()
    manifest = Path(m.path)
    manifest.write_text(manifest.read_text().replace("  date: 2026-11-20T10:00:00+00:00\n", ""))
    m = load(manifest)
    site = new_site(tmp_path)
    build_all([m], site=site, quiet=True)
    assert 'date = "2026-11-12T09:00:00+00:00"' in (site / "content/posts/sample/index.md").read_text()
    assert (hugo(site) / "posts/sample/index.html").exists()


def test_a_republished_post_says_what_changed(tmp_path):
    """Records and a built post committed; then one reading moves, one status changes, one point is
    added and one removed: the rebuilt post lists exactly those four, at the top and in a dated
    section; a rebuild without changes is byte-identical; after the commit the entry stays as it was;
    the next change adds an entry above it. No commit message or branch name reaches the page."""

    from generator.publish.build import build_all

    project = tmp_path / "project"
    folder = project / "experiments" / "sample"
    folder.mkdir(parents=True)
    shutil.copy(ROOT / "content" / "memory-ballooning.md", folder / "post.md")
    (folder / "experiment.yaml").write_text(MANIFEST.format(slug="sample", title="t", content="post.md"))
    site = new_site(project)
    m = load(folder / "experiment.yaml")
    res = Path(m.results)
    pts = {p.key: p for p in points(m)}
    for key, p in pts.items():
        if p.memory_mib != 8192 or p.guest != "rhel6":
            results.write_record(p.record_path(res), {**record(p.guest, p.memory_mib, p.repeat), **p.factors})
    git(project, "init", "-q")
    git(project, "checkout", "-q", "-b", "evil-$(id)-`x`")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "EVIL-MESSAGE <script>alert(1)</script> {{< youtube x >}}")
    build_all([m], site=site, quiet=True)
    page = site / "content" / "posts" / "sample" / "index.md"
    first_page = page.read_text()
    assert "What changed" not in first_page and "updates" not in first_page.split("+++")[1]
    git(project, "add", "-A")
    git(project, "commit", "-qm", "EVIL-MESSAGE published")
    build_all([m], site=site, quiet=True)
    published = page.read_text()

    def rewrite(key, **change):
        path = pts[key].record_path(res)
        rec = json.loads(path.read_text())
        rec.update(change)
        path.write_text(json.dumps(rec))

    for r in (1, 2):
        rec = record("precise", 4096, r)
        rewrite(f"kvm1/precise/m4096-c1024-r{r}", free_m=dict(rec["free_m"], total=rec["free_m"]["total"] - 20),
                memtotal_settled_kib=rec["memtotal_settled_kib"] - 20 * 1024, started_at="2026-12-01T09:00:00+00:00")
        rewrite(f"kvm1/rhel6/m2048-c1024-r{r}", status="oom", reason="Out of memory", free_m=None,
                memtotal_settled_kib=None)
        p = pts[f"kvm1/rhel6/m8192-c1024-r{r}"]
        results.write_record(p.record_path(res), {**record("rhel6", 8192, r), **p.factors})
        pts[f"kvm1/precise/m1024-c1024-r{r}"].record_path(res).unlink()
    build_all([m], site=site, quiet=True)
    text = page.read_text()
    front = text.split("+++")[1]
    assert front.count("[[updates]]") == 1 and 'date = "2026-12-01"' in front
    section = text.split("## What changed", 1)[1]
    items = [line for line in section.splitlines() if line.startswith("- ")]
    assert items == [
        "- Ubuntu Precise on KVM at 4 GiB now sees 821.5 MiB, 20 MiB less than on 2026-11-12.",
        "- RHEL6 on KVM at 2 GiB: saw 928.5 MiB on 2026-11-12, now ran out of memory.",
        "- Newly measured: RHEL6 on KVM at 8 GiB (saw 753.5 MiB).",
        "- No longer measured: Ubuntu Precise on KVM at 1 GiB (saw 959.5 MiB on 2026-11-12).",
    ], items
    assert ("*Updated 2026-12-01: 1 point newly measured, 1 reading moved, 1 outcome changed, 1 point no longer "
            "measured since the previous publication") in " ".join(text.split("## ", 1)[0].split())
    assert "EVIL" not in text and "evil-" not in text and "alert(1)" not in text and "youtube" not in text
    build_all([m], site=site, quiet=True, clean=True)
    assert page.read_text() == text  # no change: the same bytes, no second entry
    git(project, "add", "-A")
    git(project, "commit", "-qm", "EVIL-MESSAGE republished")
    build_all([m], site=site, quiet=True)
    after_commit = page.read_text()
    assert after_commit.split("## What changed", 1)[1] == section  # the entry stays as it was
    assert after_commit != text  # only the provenance's commit moved
    build_all([m], site=site, quiet=True, clean=True)
    assert page.read_text() == after_commit
    rec = record("rhel6", 1024, 1)  # one more change: a second entry, above the first
    for r in (1, 2):
        rewrite(f"kvm1/rhel6/m1024-c1024-r{r}", free_m=dict(rec["free_m"], total=rec["free_m"]["total"] - 30),
                started_at="2026-12-02T00:00:00+00:00")
    build_all([m], site=site, quiet=True)
    final = page.read_text()
    assert final.split("+++")[1].count("[[updates]]") == 2
    dated = re.findall(r"^### Updated (\S+)$", final, re.M)
    assert dated == ["2026-12-02", "2026-12-01"]
    assert "RHEL6 on KVM at 1 GiB now sees" in final.split("### Updated 2026-12-02", 1)[1].split("### Updated")[0]
    html = (hugo(site) / "posts" / "sample" / "index.html").read_text()
    assert 'id="what-changed"' in html and 'href="#what-changed"' in html and "Updated 2026-12-02" in html
    # a change of versions only (the host's kernel, re-measured with the same readings): an entry says
    # which version came, once, and the post does not open with "Updated"
    git(project, "add", "-A")
    git(project, "commit", "-qm", "second republication")
    build_all([m], site=site, quiet=True)
    for r in (1, 2):
        rewrite(f"kvm1/rhel6/m4096-c1024-r{r}", host_kernel="6.1.0-58-amd64", started_at="2026-12-03T00:00:00+00:00")
    build_all([m], site=site, quiet=True)
    versions = page.read_text()
    assert re.findall(r"^### Updated (\S+)$", versions, re.M)[0] == "2026-12-03"
    newest = versions.split("### Updated 2026-12-03", 1)[1].split("### Updated")[0]
    assert "6.1.0-58-amd64 now as well" in newest and "throughout" in newest, newest
    assert "*Updated" not in versions.split("+++")[2].split("## ", 1)[0]  # no notice at the top
    assert "readings = 0" in versions.split("+++")[1]


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


def test_the_docs_minimal_post_builds(tmp_path):
    """The minimal post the docs show, as written there, builds a page with its answer first."""
    readme = (ROOT / "docs" / "results-and-posts.md").read_text()
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


def test_others_text_does_not_become_markdown_structure_in_hugo(sample, tmp_path):
    """A guest label and a published 'What changed' entry that start like a heading with goldmark's
    attributes, a numbered list or a thematic break, with bidi and control characters: Hugo's HTML
    shows them as text, with no heading attributes, no list, no rule and no invisible reordering."""
    m = sample()
    manifest = Path(m.path)
    label = "# Pwned {style=position:fixed}"
    manifest.write_text(manifest.read_text().replace("label: RHEL6", f"label: {json.dumps(label)}"))
    m = load(manifest)
    for path in Path(m.results).rglob("*.json"):
        rec = results.read_record(path)
        rec["guest_kernel"] = "6.1.0-\u202eevil\x1b[31m"
        results.write_record(path, rec)
    site = new_site(tmp_path)
    build_all([m], site=site, quiet=True)
    page = site / "content/posts/sample/index.md"
    text = page.read_text()
    # an entry edited into the published page, read back at the next build
    entry = ('[[updates]]\ndate = "2026-12-01"\nbase = "0123456789ab"\nchanges = ["1. Pwned {.x}", '
             '"# Pwned {style=position:fixed}", "---", "see https://evil.example/x, www.evil.example and '
             'me@evil.example"]\n\n')
    head, body = text[4:].split("\n+++\n", 1)
    page.write_text("+++\n" + head + "\n\n" + entry + "+++\n" + body)
    build_all([m], site=site, quiet=True)
    rebuilt = page.read_text()
    assert "1\\. Pwned" in rebuilt and "\\# Pwned" in rebuilt  # the entries were read back and shown
    html = (hugo(site) / "posts/sample/index.html").read_text()
    assert "position:fixed" not in html.split("Pwned", 1)[0]  # no attribute put on an element
    assert 'style="position:fixed"' not in html and "style=position" not in html.replace("{style=position", "")
    article = html[html.index("<article>"):html.index("</article>")]
    assert "<ol" not in article and "<hr" not in article
    assert "\u202e" not in html and "\x1b" not in html
    assert "Pwned" in article
    # bare addresses stay text: goldmark's linkify (on in Hugo by default) made links of them
    assert "evil.example/x" in article and "<a" not in article.split("evil.example/x")[0].rsplit("see", 1)[-1]
    assert 'href="https://evil' not in html and 'href="http://www.evil' not in html and "mailto:" not in html
