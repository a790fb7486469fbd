"""Hostile input, class by class (issue 8): manifests, records, content and build state written by
someone else, and a full disk. Each test feeds the real code the attack and asserts it is refused
cleanly or made harmless."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from generator import results
from generator.publish.build import build_all, markdown_to_safe_html, md_code, md_text
from generator.errors import ManifestError, UserError
from generator.manifest import load

from test_build import HUGO, hugo, new_site, record, sample  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=ROOT, timeout=60):
    return subprocess.run([sys.executable, "-m", "generator", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(out) -> str:
    """Exit 1 with one error line and no traceback (a sweep's '== experiment' heading aside)."""
    assert out.returncode == 1, (out.returncode, out.stderr)
    lines = [ln for ln in out.stderr.strip().splitlines() if not ln.startswith("== ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out.stderr, out.stderr
    return lines[0]


# --- 5. unbounded or malformed manifests --------------------------------------------------------------
BASE = """experiment: x
hosts: [{name: local}]
guests: [{name: g}]
sweep: {memory: [1 GiB], current_memory: [1024 MiB]}
post: {slug: x, title: t, content: p.md}
"""


def write(tmp_path, text: str) -> Path:
    folder = tmp_path / "x"
    folder.mkdir(exist_ok=True)
    (folder / "p.md").write_text("x\n")
    path = folder / "experiment.yaml"
    path.write_text(text)
    return path


def test_alias_bomb_is_refused_within_a_second(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for i, name in enumerate("bcdefghij"):
        prev = "abcdefghij"[i]
        bomb += f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]\n"
    t0 = time.monotonic()
    with pytest.raises(ManifestError, match="expands to more than 20000 values"):
        load(write(tmp_path, bomb + BASE))
    assert time.monotonic() - t0 < 1.0


def test_huge_lists_and_plans_are_refused_quickly(tmp_path):
    big = "[" + ", ".join(f"{i + 1} GiB" for i in range(2000)) + "]"
    t0 = time.monotonic()
    with pytest.raises(ManifestError, match=r"sweep.memory: has 2000 items; at most 1000"):
        load(write(tmp_path, BASE.replace("[1 GiB]", big)))
    with pytest.raises(ManifestError, match=r"sweep.repeats: 1000000000 is not a whole number from 1 to 1000"):
        load(write(tmp_path, BASE.replace("current_memory: [1024 MiB]", "current_memory: [1024 MiB], repeats: 1000000000")))
    many = "[" + ", ".join(f"{i + 1} GiB" for i in range(500)) + "]"
    with pytest.raises(ManifestError, match=r"asks for 50000 points .* at most 20000"):
        load(write(tmp_path, BASE.replace("[1 GiB]", many).replace("current_memory: [1024 MiB]",
                                                                   "current_memory: [1024 MiB], repeats: 100")))
    assert time.monotonic() - t0 < 2.0
    with pytest.raises(UserError, match="bytes, more than the 262144 allowed"):
        load(write(tmp_path, BASE + "#" * 300_000 + "\n"))


@pytest.mark.parametrize("change,message", [
    (("post: {slug: x", "post: {date: 2026-13-45, slug: x"), "line 5, column 14: '2026-13-45' is not a valid date"),
    (("[1 GiB]", "[1 GiB]\n  memory: [2 GiB]"), None),  # flow mapping: not a duplicate but a YAML error
    (("experiment: x\n", "experiment: x\nexperiment: y\n"), "line 2, column 1: duplicate key 'experiment' (first at line 1)"),
    (("current_memory: [1024 MiB]}", "current_memory: [1024 MiB]}\ntimeouts: {boot: .inf}"),
     "timeouts.boot: inf is outside 0.001 s .. 604800 s"),
    (("current_memory: [1024 MiB]}", "current_memory: [1024 MiB]}\ntimeouts: {settle: .nan}"),
     "timeouts.settle: nan is outside"),
    (("current_memory: [1024 MiB]}", "current_memory: [1024 MiB]}\nballoon: {stats_period: 0.5s}"),
     "balloon.stats_period: '0.5s' is outside 1 s .. 3600 s"),
    (("{name: local}", "{name: r, uri: 'qemu+ssh://root@h/system', ssh: {port: 70000}}"),
     "hosts[0].ssh.port: 70000 is not a whole number from 1 to 65535"),
    (("{name: local}", "{name: r, uri: 'qemu+ssh://root@h/system', workdir: ''}"), None),
    (("{name: local}", "{name: r, uri: 'qemu+ssh://root@h/system', workdir: /}"), "hosts[0].workdir: '/' is not an absolute folder"),
    (("{name: local}", "{name: r, uri: 'qemu+ssh://root@h/system', workdir: /var/../etc}"), "hosts[0].workdir: '/var/../etc'"),
    (("{name: local}", "{name: r, uri: 'qemu+ssh://root@h/system?no_verify=1'}"), "no_verify turns off SSH host key checking"),
    (("[1 GiB]", "[1000000000000000000000000000000 GiB]"), "sweep.memory[0]: '1000000000000000000000000000000 GiB' is outside"),
    (("current_memory: [1024 MiB]}", "current_memory: [1024 MiB]}\nballoon: {model: xen}"),
     "balloon.model: 'xen' is not QEMU/KVM's balloon, and host(s) local run QEMU/KVM"),
    (("{name: g}", "{name: \"g\\n\"}"), "guests[0].name: 'g\\n' is not a valid name"),
    (("{name: g}", "{name: ../../etc}"), "guests[0].name: '../../etc' is not a valid name"),
    (("slug: x", "slug: 'x/../../y'"), "post.slug: 'x/../../y' is not a valid name"),
    (("experiment: x", "experiment: 'a/b'"), "experiment: 'a/b' is not a valid name"),
    (("{name: g}", "{name: g, kernel: \"debian:trixie\\nmain\"}"), "is not a Debian suite"),
    (("content: p.md", "content: /etc/hostname"), "post.content: '/etc/hostname' resolves to /etc/hostname, outside the project folder"),
    (("content: p.md", "content: ../../../../etc/hostname"), "outside the project folder"),
    (("post: {", "results: /tmp\npost: {"), "results: '/tmp' resolves to /tmp, outside the project folder"),
    (("post: {slug: x", "post: {original: 'javascript:alert(1)', slug: x"), "post.original: 'javascript:alert(1)' is not an http(s) URL"),
    (("title: t", "title: \"a\\u0000b\""), "post.title: contains control characters"),
])
def test_bad_values_are_one_clear_problem(tmp_path, change, message):
    old, new = change
    assert old in BASE
    path = write(tmp_path, BASE.replace(old, new, 1))
    if message is None:
        try:
            load(path)
        except ManifestError:
            pass
        return
    with pytest.raises(ManifestError) as e:
        load(path)
    assert any(message in p for p in e.value.problems), e.value.problems


def test_kernel_suite_with_a_newline_does_not_reach_apt(tmp_path):
    with pytest.raises(ManifestError) as e:
        load(write(tmp_path, BASE.replace("{name: g}", '{name: g, kernel: "debian:trixie\\n"}')))
    assert "guests[0].kernel" in "\n".join(e.value.problems)


def test_cli_errors_are_one_line(tmp_path):
    path = write(tmp_path, BASE.replace("experiment: x\n", "experiment: x\nexperiment: y\n"))
    line = one_line_error(cli("validate", str(path)))
    assert "duplicate key 'experiment'" in line
    line = one_line_error(cli("status", str(path)))
    assert "duplicate key 'experiment'" in line
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    line = one_line_error(cli("status", str(fifo), timeout=20))
    assert "not a regular file" in line


# --- 2. paths outside their folder -----------------------------------------------------------------------
def test_build_state_cannot_delete_files_outside_the_site(sample, tmp_path):
    m = sample()
    site = new_site(tmp_path)
    build_all([m], site=site, quiet=True)
    victims = [tmp_path / "victim", tmp_path / "victim2"]
    for v in victims:
        v.write_text("keep me")
    (site / "victim3").write_text("outside the outputs, inside the site")
    from generator.publish.build import state_path as where
    state_path = where(site)
    state = json.loads(state_path.read_text())
    for bad in (str(victims[0]), "../victim2", "content/../../victim2", "victim3/.."):
        state["outputs"][bad] = {"inputs": "x", "sha256": "y", "post": "sample"}
    state_path.write_text(json.dumps(state))
    build_all([m], site=site, quiet=True)
    assert all(v.read_text() == "keep me" for v in victims)
    assert (site / "victim3").exists()


def test_building_one_post_keeps_the_others(sample, tmp_path):
    a = sample(name="a", slug="post-a")
    b = sample(name="b", slug="post-b")
    site = new_site(tmp_path)
    build_all([a, b], site=site, quiet=True)
    before = {p: p.read_bytes() for p in (site / "content/posts/post-b").iterdir()}
    assert len(before) == 4
    report = build_all([a], site=site, quiet=True)
    assert report.removed == []
    assert {p: p.read_bytes() for p in (site / "content/posts/post-b").iterdir()} == before
    assert (site / "previews/post-b.html").exists()
    from generator.publish.build import state_path
    state = json.loads(state_path(site).read_text())["outputs"]
    assert any(k.startswith("content/posts/post-b/") for k in state)  # still known, so still cleaned later
    # a post's own stale outputs are still removed
    shutil.rmtree(Path(b.results) / "kvm1" / "rhel6")
    report = build_all([b], site=site, quiet=True)
    assert sorted(p.name for p in report.removed) == ["kvm-rhel6-1024.png"]


def test_symlinked_content_outside_the_project_is_refused(sample, tmp_path):
    m = sample()
    link = Path(m.path).parent / "post.md"
    link.unlink()
    link.symlink_to("/etc/hostname")
    with pytest.raises(ManifestError, match="post.content: 'post.md' resolves to /etc/hostname, outside"):
        load(m.path)


# --- 4. text reaching HTML and templates ---------------------------------------------------------------
XSS = ['<script>alert(1)</script>', '<img src=x onerror=alert(2)>', '[click](javascript:alert(3))',
       '<a href="javascript:alert(4)">x</a>', '`code` | pipe [link](http://evil.example/)']


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


def test_markdown_helpers_make_text_literal():
    assert md_text("[a](javascript:x) <b> | `c`") == "\\[a\\](javascript:x) &lt;b&gt; \\| \\`c\\`"
    assert md_code("a ` b") == "``a ` b``"
    html = markdown_to_safe_html('<script>x()</script>\n\n[y](javascript:z) ![i](data:text/html,x) [ok](https://a.example/)')
    assert "<script>" not in html and 'href=""' in html and 'src=""' in html and 'href="https://a.example/"' in html


def test_content_files_are_sandboxed(sample, tmp_path):
    evil = Path(sample().path).parent / "evil.md"
    marker = tmp_path / "pwned"
    evil.write_text("{{ cycler.__init__.__globals__.os.system('touch " + str(marker) + "') }}\n"
                    "{{ ''.__class__.__mro__[1].__subclasses__() }}\n")
    m = sample(content=str(evil))
    site = new_site(tmp_path)
    with pytest.raises(UserError, match=r"evil.md:1: template error: SecurityError"):
        build_all([m], site=site, quiet=True)
    assert not marker.exists()
    assert not (site / "content/posts/sample").exists()


# --- 7. failing late and loudly: a full disk during build ------------------------------------------------
def fill(mnt: Path, leave: int = 0) -> None:
    """Fill a file system, then give back `leave` bytes."""
    fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError:
        pass
    finally:
        os.close(fd)
    size = (mnt / "filler").stat().st_size
    os.truncate(mnt / "filler", max(0, size - leave))


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mnt)], capture_output=True,
                         text=True)
    assert out.returncode == 0, f"this test needs root to mount a tmpfs: {out.stderr}"
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_disk_full_during_build_leaves_the_site_as_it_was(sample, tmp_path, small_tmpfs):
    m = sample()
    site = small_tmpfs / "site"
    shutil.copytree(new_site(tmp_path), site)
    build_all([m], site=site, quiet=True)
    before = {str(p): p.read_bytes() for p in site.rglob("*") if p.is_file()}
    for path in Path(m.results).rglob("*.json"):  # every output must be rendered again
        rec = results.read_record(path)
        rec["guest_kernel"] = "9.9.9-changed"
        results.write_record(path, rec)
    fill(small_tmpfs, leave=20 * 1024)  # less than the new outputs need
    with pytest.raises(UserError, match=r"cannot write \(No space left on device\); nothing was changed in the site"):
        build_all([m], site=site, quiet=True)
    after = {str(p): p.read_bytes() for p in site.rglob("*") if p.is_file()}
    assert after == before  # no half-old, half-new site and no temporary files


def test_results_folder_is_checked_before_anything_boots(tmp_path, small_tmpfs):
    full = small_tmpfs / "results"
    full.mkdir()
    fill(small_tmpfs)
    with pytest.raises(UserError, match=rf"{full}: results cannot be written there \(No space left on device\)"):
        results.check_writable(full)


def test_unreachable_debian_mirror_is_named_and_leaves_nothing(tmp_path, monkeypatch):
    import socket

    from generator.guests import kernels

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MEMBALLOON_DEBIAN_MIRROR", f"http://127.0.0.1:{port}/debian")
    with pytest.raises(UserError, match=rf"guest kernel 'debian:bookworm': could not reach the Debian mirror "
                                        rf"http://127.0.0.1:{port}/debian for 'bookworm'"):
        kernels.fetch("debian:bookworm", tmp_path)
    assert list((tmp_path / "kernels").iterdir()) == []  # no work folder, no half-unpacked kernel
    monkeypatch.setenv("MEMBALLOON_DEBIAN_MIRROR", "http://x/\nevil")
    with pytest.raises(UserError, match="is not a plain http"):
        kernels.fetch("debian:bookworm", tmp_path)


def test_sweep_refuses_an_unwritable_results_folder_before_booting(tmp_path, small_tmpfs):
    path = write(tmp_path, BASE)
    fill(small_tmpfs)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "generator", "sweep", str(path), "--results", str(small_tmpfs)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, MEMBALLOON_CACHE=str(tmp_path / "cache")))
    line = one_line_error(out)
    assert f"{small_tmpfs}/x: results cannot be written there (No space left on device)" in line
    assert time.monotonic() - t0 < 15 and not (tmp_path / "cache" / "probe").exists()  # nothing was built or booted


# --- 3. shared and world-writable places ----------------------------------------------------------------
def local_host(tmp_path, root: Path):
    from generator.hosts import LocalHost
    from generator.manifest import Host

    os.environ["MEMBALLOON_EMBED_ROOT"] = str(root)
    try:
        return LocalHost(Host(name="local"), tmp_path / "cache")
    finally:
        del os.environ["MEMBALLOON_EMBED_ROOT"]


def test_planted_embed_roots_are_refused(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(UserError, match=r"accessible to others \(mode 0777\)"):
        local_host(tmp_path, shared).connect()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(UserError, match="found a symlink"):
        local_host(tmp_path, link).connect()
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    os.chown(other, 65534, 65534)  # nobody's folder
    with pytest.raises(UserError, match="belongs to uid 65534"):
        local_host(tmp_path, other).connect()
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "sweep.lock").symlink_to(victim)
    with pytest.raises(UserError, match="sweep.lock: cannot open .* a symlink there is refused"):
        local_host(tmp_path, private).connect()
    (private / "sweep.lock").unlink()
    (private / "etc").mkdir(mode=0o700, exist_ok=True)
    (private / "etc" / "qemu.conf").symlink_to(victim)
    with pytest.raises(UserError, match="qemu.conf: cannot write .* a symlink there is refused"):
        local_host(tmp_path, private).connect()
    assert victim.read_text() == "keep me"


def test_the_short_embed_root_is_private_and_per_user(tmp_path, monkeypatch):
    from generator.hosts import embed_root

    monkeypatch.delenv("MEMBALLOON_EMBED_ROOT", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    deep = tmp_path / ("x" * 60)
    root = embed_root(deep)
    assert root.parent == Path("/tmp") and root.name.startswith(f"memballoon-{os.geteuid()}-")


# --- round two, 3. Hugo executes what the tool writes ------------------------------------------------------
HOSTILE_HUGO = ["{{< youtube x >}}", "{{% param title %}}", "{{</* youtube y */>}}", "{{< param title >}}",
                "*emph* _under_ ~~strike~~", "<!--more-->", "half {{<", "{{%"]


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


def test_hugo_openers_cannot_be_made_from_escaped_values():
    """No value, nor two values side by side, leaves '{{<' or '{{%' for Hugo; text without an opener
    keeps its bytes; code spans break openers with a zero-width space and nothing else."""
    import itertools

    pieces = ["{", "{{", "%", "<", "{%", "{<", "x{", "{x", "a {{ b }}", "%}}", "{{{%", "", " "]
    for a, b in itertools.product(pieces, repeat=2):
        joined = str(md_text(a)) + str(md_text(b))
        assert "{{<" not in joined and "{{%" not in joined, (a, b, joined)
        assert "{{<" not in str(md_code(a + b)) and "{{%" not in str(md_code(a + b)), (a, b)
    for same in ("6.1.0-13-amd64", "a {x} b", "a {{ y }}", "virtio_balloon", "100 %", "QEMU 8.2.0, libvirt 10.0.0"):
        assert md_text(same) == same
    assert md_code("x {{< y >}} <!--more-->") == "`x {\u200b{< y >}} <\u200b!--more-->`"
    assert md_text("*a* _b_ ~~c~~ snake_case") == "\\*a\\* \\_b\\_ \\~\\~c\\~\\~ snake_case"


def test_truncating_escaped_text_is_refused(sample, tmp_path):
    """Cutting escaped text could cut an escape in half: truncate works on the value, before escaping."""
    m = sample()
    post = Path(m.path).parent / "post.md"
    post.write_text("{{ data.series[0].guest_label | truncate(9, leeway=0) | code }}\n")
    site = new_site(tmp_path)
    build_all([m], site=site, quiet=True)
    assert "`Ubuntu...`" in (site / "content/posts/sample/index.md").read_text()
    post.write_text("{{ data.series[0].guest_label | md_escape | truncate(9, leeway=0) }}\n")
    with pytest.raises(UserError, match=r"post.md:1: template error: ValueError: truncate the value before escaping"):
        build_all([m], site=site, quiet=True)


# --- round two, 4. graph text is parsed as math -------------------------------------------------------------
MATH = ["costs $5 or $10", "6.1.0-$\\frac{1}{0}$", "$\\undefinedcommand{x}$", "$^^^$", "$" + "{" * 3000 + "$",
        "$" + "x^" * 2000 + "x$"]


@pytest.mark.filterwarnings("ignore:Tight layout not applied")
def test_graph_text_is_plain_text_never_mathtext():
    """Guest kernels (the series' label when the manifest names none) and host names with '$' reach the
    graphs' titles and legends: every graph still renders, and its text is not parsed as math."""
    import matplotlib.text

    from generator.publish import plots
    from generator.publish.analysis import build_series

    recs = []
    for i, kernel in enumerate(MATH):
        for memory in (1024, 2048, 32768):
            r = record("precise", memory, 1)
            recs.append(dict(r, guest=f"g{i}", guest_kernel=kernel, host=f"h$^{i}$"))
    series = build_series(recs, {}, 2)
    assert "Linux costs $5 or $10" in {s.guest_label for s in series}
    for s in series:
        assert plots.series_png(s.lean())[:8] == b"\x89PNG\r\n\x1a\n", s.title
    assert plots.all_series_png([s.lean() for s in series])[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.lost_png([s.lean() for s in series], [s.fit() for s in series])[:8] == b"\x89PNG\r\n\x1a\n"
    plt = plots._pyplot()
    fig = plt.figure()
    try:
        t = fig.text(0, 0, "costs $5 or $10")
        assert isinstance(t, matplotlib.text.Text) and t._preprocess_math(t.get_text()) == ("costs $5 or $10", False)
    finally:
        plt.close(fig)


# --- round two, 5. terminal control sequences from guests and records -------------------------------------
TERMINAL_ATTACK = "OSC52 \x1b]52;c;cm0gLXJmIH4=\x07 title \x1b]0;pwned\x07 clear \x1b[2J cr \roverwrite bel \x07 " \
                  "c1 \x9b31m st \x1bP+q\x1b\\ reset \x1bc end"


def _through_a_terminal(argv, cwd) -> bytes:
    """Run the real CLI with a pseudo-terminal as its stdout and stderr (raw: the terminal adds no CR of
    its own) and return every byte the terminal received."""
    import pty
    import select
    import tty

    master, slave = pty.openpty()
    tty.setraw(slave)
    proc = subprocess.Popen([sys.executable, "-m", "generator", *argv], cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other end is closed
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=30)
    os.close(master)
    assert proc.returncode == 0, out
    return out


def test_status_on_a_terminal_receives_no_control_sequences_from_records(sample, tmp_path):
    m = sample()
    for path in Path(m.results).rglob("*.json"):
        rec = results.read_record(path)
        rec["reason"] = TERMINAL_ATTACK
        if rec["status"] == "ok":
            rec.update(reading="agent\x1b]0;x\x07", oom_kills=["ev\x1b[2Jil", "\x1b]52;c;eA==\x07name"],
                       cross_check={"agree": False, "agent_memtotal_kib": 1, "balloon_available_kib": 2})
        results.write_record(path, rec)
    out = _through_a_terminal(["status", "-v", m.path], cwd=tmp_path)
    assert b"\x1b" not in out and b"\x07" not in out and b"\r" not in out and b"\xc2\x9b" not in out, out
    text = out.decode()
    assert "refused: OSC52  title  clear  cr  overwrite bel  c1  st  reset  end" in text  # the words stay
    assert "OOM killer killed evil, name" in text and "read via agent;" in text
    assert "16 done, 4 failed, 0 missing" in text


def test_the_progress_line_receives_no_control_sequences_from_guests():
    import io

    from generator.progress import Progress

    out = io.StringIO()
    p = Progress(stream=out, live=True)
    p.start(2)
    p.begin("local/g/m1024-c1024-r1")
    p.end("local/g/m1024-c1024-r1", {"status": "oom", "reason": TERMINAL_ATTACK, "memory_mib": 1024,
                                    "current_memory_mib": 1024})
    p.note("guest says \x1b]0;t\x07 hi")
    p.finish()
    text = out.getvalue()
    own = text.replace("\r\033[K", "")  # the bar's own carriage return and erase-line
    assert "\x1b" not in own and "\x07" not in own and "\r" not in own and "\x9b" not in own, repr(own)
    assert "oom: OSC52  title  clear  cr  overwrite" in own and "guest says  hi" in own


def test_stored_console_text_has_no_control_characters():
    """What measure keeps of a console (excerpt, reasons, OOM names, dmesg, the kernel release) holds no
    control characters, and numbers a guest prints are read only when they are readings."""
    from generator.guests import system
    from generator.measure import Console, _classify_death, _excerpt, _fill_guest_view, _one_line

    console = ("@@MEMBALLOON init 1.0\n@@MEMBALLOON kernel 6.1.0-amd64 {{< youtube x >}} $5\n"
               "[ 2.0] Out of memory: Killed process 7 (ev\x1b[2Jil)\n"
               "[ 3.0] Kernel panic - not syncing: \x1b]52;c;eA==\x07 System is deadlocked on memory\r\n"
               "\x1b[31mred\x1b[0m line\twith tab\n")
    record = {"durations": {}, "guest_kernel": "from-the-image"}
    c = Console.parse(console)
    _fill_guest_view(record, c, 1.0)
    assert record["guest_kernel"] == "from-the-image"  # not a release: the agent's check applies to the console
    _fill_guest_view(record, Console.parse("@@MEMBALLOON kernel 6.1.0\x1b]0;x\x07-amd64\n"), 1.0)
    assert record["guest_kernel"] == "6.1.0-amd64"
    _classify_death(record, c)
    lines = _excerpt(console) + [record["reason"], _one_line("\x1b[2Jqemu-system-x86_64: \x07bad")]
    lines += system.oom_kills(console)
    for line in lines:
        assert not any(ord(ch) < 32 or 0x7f <= ord(ch) <= 0x9f for ch in line), repr(line)
    assert "red line with tab" in lines and system.oom_kills(console) == ["evil"]
    assert record["status"] == "oom" and "System is deadlocked on memory" in record["reason"]


# --- round two, 7. numbers and dates ---------------------------------------------------------------------
def _ok_record_bytes(**change) -> bytes:
    base = record("precise", 1024, 1)
    base.update(change)
    return results.dumps(dict(base, schema_version=results.SCHEMA_VERSION)).encode()


@pytest.mark.parametrize("raw, field", [
    (_ok_record_bytes(free_m={"total": 1.5e308}), "'free_m.total' is too large"),
    (_ok_record_bytes().replace(b'"total": 961', b'"total": 1' + b"0" * 400), "'free_m.total' is too large"),
    (_ok_record_bytes().replace(b'"total": 961', b'"total": ' + b"9" * 4000), "'free_m.total' is too large"),
    (_ok_record_bytes().replace(b'"total": 961', b'"total": 1e400'), "'free_m.total' is too large"),
    (_ok_record_bytes(free_m={"total": -5}), "free_m.total is -5, below 0"),
    (_ok_record_bytes(free_m=None), "an ok record without 'free_m.total'"),
    (_ok_record_bytes(memtotal_settled_kib=None), "an ok record without 'memtotal_settled_kib'"),
    (_ok_record_bytes(memtotal_settled_kib=64 * 1024 * 1024), "'memtotal_settled_kib' is 67108864 KiB, more than memory"),
    (_ok_record_bytes(free_m={"total": 5000}), "free_m.total is 5000 MiB, more than MemTotal"),
    (_ok_record_bytes(host_memory_mib=-1), "'host_memory_mib' is -1, below 0"),
    (_ok_record_bytes(started_at="9999-01-01T00:00:00+00:00"), "'started_at' '9999-01-01T00:00:00+00:00' is in the future"),
    (_ok_record_bytes(started_at="yesterday"), "'started_at' 'yesterday' is not an ISO 8601 time"),
    (_ok_record_bytes(started_at="2026-02-30T10:00:00+00:00"), "is not an ISO 8601 time"),
    (_ok_record_bytes(started_at="2026-11-10T09:00:00"), "is not an ISO 8601 time with its offset"),
    (_ok_record_bytes(durations={"total_s": 1e300}), "'durations.total_s' is too large"),
    (_ok_record_bytes(balloon_timeline=[[1.0, 2 ** 60, None]]), "'balloon_timeline[0][1]' is too large"),
])
def test_absurd_numbers_and_dates_in_records_are_one_line_naming_file_and_field(sample, tmp_path, raw, field):
    m = sample()
    target = Path(m.results) / "kvm1" / "precise" / "memory-1024MiB-current-1024MiB-r1.json"
    target.write_bytes(raw)
    for argv in (["status", m.path], ["build", m.path, "--site", str(new_site(tmp_path))]):
        line = one_line_error(cli(*argv, cwd=tmp_path))
        assert str(target) in line and field in line, line


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


def test_guest_numbers_are_bounded_before_they_are_parsed():
    from generator.guests import system
    from generator.measure import Console, _fill_guest_view, parse_free, parse_meminfo

    huge = "9" * 4000
    assert parse_free(f"  total used\nMem: {huge} 5\n") is None
    assert parse_free("  total used\nMem: ١٢٣ 5\n") is None  # digits of another script are not a reading
    assert parse_free("  total used\nMem: 843 206\n") == {"total": 843, "used": 206}
    info = parse_meminfo(f"MemTotal: {huge} kB\nMemFree: 1e400 kB\nCached: 12 kB\n" +
                         "".join(f"K{i}: 1 kB\n" for i in range(1000)))
    assert "MemTotal" not in info and info["Cached"] == 12 and len(info) == 200
    assert system.parse_memtotal(f"MemTotal: {huge} kB\n") is None
    text = (f"@@MEMBALLOON init 1.5e308\n@@MEMBALLOON settled-memtotal-kib {huge}\n@@MEMBALLOON boot-memtotal-kib nan\n"
            "@@MEMBALLOON settled 1_000\n@@MEMBALLOON begin xen-balloon\ninfo/current_kb ²\ntarget_kb 12\n"
            f"low_kb {huge}\n@@MEMBALLOON end xen-balloon\n")
    record = {"durations": {}}
    _fill_guest_view(record, Console.parse(text), None)  # no traceback: '²'.isdigit() is True, int('²') fails
    assert record["memtotal_settled_kib"] is None and record["memtotal_boot_kib"] is None
    assert record["xen_balloon"] == {"target_kb": 12} and "guest_boot_s" not in record["durations"]


def test_a_sweep_never_writes_a_record_its_reader_refuses(tmp_path):
    """A guest reporting more MemTotal than its memory makes an error record, kept and readable."""
    rec = dict(record("precise", 1024, 1), memtotal_settled_kib=10 ** 12, schema_version=results.SCHEMA_VERSION)
    kept = results.checked(rec)
    assert kept["status"] == "error" and "implausible readings: 'memtotal_settled_kib' is" in kept["reason"]
    path = tmp_path / "r.json"
    results.write_record(path, kept)
    assert results.read_record(path)["status"] == "error"
    worse = results.checked(dict(rec, started_at="9999-01-01T00:00:00+00:00", status="oom"))
    assert worse["status"] == "error" and "started_at" in worse["reason"] and "started_at" not in worse
    results.write_record(path, worse)
    assert results.read_record(path)["reason"].startswith("the record could not be kept")
    good = dict(record("precise", 1024, 1), schema_version=results.SCHEMA_VERSION)
    assert results.checked(good) == good
