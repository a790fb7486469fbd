"""The build (generator/publish/build.py): incremental and reproducible output, template errors, and
manifests, records and content from someone else (escaping, sandboxing, a full disk)."""
from __future__ import annotations

import json
import re
import shutil
import tomllib
from pathlib import Path

import pytest

from generator import results
from generator.errors import ManifestError, UserError
from generator.manifest import load
from generator.publish.build import build_all
from generator.publish.templating import markdown_to_safe_html, md_code, md_text
from tests.support import ROOT  # noqa: F401
from tests.support.disk import fill, small_tmpfs  # noqa: F401
from tests.support.manifests import BASE, write  # noqa: F401
from tests.support.sample import hugo, new_site, sample, sample_without_content, tree  # noqa: F401


def test_two_clean_builds_are_identical(sample, tmp_path):
    m = sample()
    a, b = new_site(tmp_path, "a"), new_site(tmp_path, "b")
    build_all([m], site=a, quiet=True)
    build_all([m], site=b, quiet=True, clean=True)
    assert tree(a / "content") == tree(b / "content") and tree(a / "previews") == tree(b / "previews")


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
    # the page, its two graphs that show the point, its preview, and its claims (site/claims/sample.json)
    assert written == ["index.md", "kvm-rhel6-1024.png", "sample-memory-lost.png", "sample.html", "sample.json"]
    assert [p.name for p in report.skipped] == ["kvm-precise-1024.png"]


def test_clean_rebuild_renders_everything_but_rewrites_nothing(sample, tmp_path):
    m = sample()
    site = new_site(tmp_path)
    build_all([m], site=site, quiet=True)
    report = build_all([m], site=site, quiet=True, clean=True)
    assert report.written == [] and len(report.unchanged) == 6  # page, 3 graphs, preview, claims


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
    # the sample's boots are not itemized: no rule is fitted, and no per-GiB figure is claimed
    assert "![MiB lost against memory (log scale); 2 without a rule drawn, up to 270.5 MiB" in text


def test_preview_is_self_contained(sample, tmp_path):
    site = new_site(tmp_path)
    build_all([sample()], site=site, quiet=True)
    html = (site / "previews/sample.html").read_text()
    assert html.count('src="data:image/png;base64,') == 3
    assert 'src="kvm-' not in html and "<table>" in html and "<title>Where did my memory go?</title>" in html


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


def test_the_build_does_not_write_through_a_symlinked_post_folder(tmp_path):
    """A site from a cloned repository whose post folder is a symlink out of the site: refused, nothing written."""
    from generator.publish.build import build_all
    from tests.support.sample import new_site

    write(tmp_path, BASE)
    m = load(tmp_path / "x" / "experiment.yaml")
    site = new_site(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (site / "content" / "posts").mkdir(parents=True)
    (site / "content" / "posts" / "x").symlink_to(elsewhere)
    with pytest.raises(UserError, match="outside"):
        build_all([m], site=site, quiet=True)
    assert list(elsewhere.iterdir()) == []


def test_a_post_depends_on_all_the_code_it_is_made_by():
    """Each post's inputs hash the code of publish/post.py and of every module it imports, at any depth:
    predict's interpolation lives in model.py, the labels in hypervisors/, and an edit to either makes
    the posts stale (a hand-kept list once missed model.py)."""
    from generator.publish.engine import code_of

    post = code_of("publish/post.py")
    assert {"publish/post.py", "publish/analysis.py", "predict.py", "model.py", "units.py",
            "hypervisors/qemu.py", "hypervisors/xen.py", "publish/templating.py"} <= set(post)
    assert "sweep.py" not in post and "measure.py" not in post  # what measures is not what publishes
    assert set(code_of("publish/plots.py")) <= set(post)
    # the same closure as the import graph read with Python's own parser (tests/unit/test_extending.py)
    from tests.unit.test_extending import import_graph

    graph, seen, todo = import_graph(), set(), ["generator.publish.post"]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph[name])
    modules = {n.removeprefix("generator.").replace(".", "/") + ".py" for n in seen}
    assert {m for m in modules if (ROOT / "generator" / m).is_file()} == \
        {f for f in post if not f.endswith("__init__.py")}


@pytest.mark.parametrize("planted, what", [
    ("{% raw %}{{< youtube dQw4w9WgXcQ >}}{% endraw %}", "{% raw %}"),
    ('{{ "{{< nosuchshortcode >}}" | safe }}', "the filter 'safe'"),
    ('{{ "{{< youtube x >}}" | e }}', "the filter 'e'"),
    ('{{ "{{% x %}}" | escape }}', "the filter 'escape'"),
])
def test_a_content_file_cannot_put_a_shortcode_on_the_page(sample, tmp_path, planted, what):
    """Content files are someone else's input: {% raw %} and markup-returning filters are refused with the
    file and line, also in a file the content includes; nothing is written."""
    site = new_site(tmp_path)
    manifest = sample()
    post = Path(manifest.post.content)
    post.write_text(post.read_text() + f"\n\nplanted: {planted}\n")
    with pytest.raises(UserError) as e:
        build_all([manifest], site=site, quiet=True)
    line = len(post.read_text().splitlines())
    assert f"{post}:{line}: template error: a content file may not use {what}" in str(e.value)
    assert not (site / "content" / "posts" / "sample").exists()
    # through an included content file too
    (post.parent / "part.md").write_text(f"x\n{planted}\n")
    post.write_text(post.read_text().replace(f"planted: {planted}", '{% include "part.md" %}'))
    with pytest.raises(UserError, match=r"part.md:2: template error: a content file may not use"):
        build_all([manifest], site=site, quiet=True)


def test_a_republished_post_keeps_its_date(tmp_path):
    """`date` is the first publication's: a re-measure moves `lastmod` (from its update), not the date
    readers and links know it by. A page that says nothing usable is ignored."""
    from generator.publish import post as post_mod

    class M:
        class post:
            date = ""
    recs = [{"started_at": "2026-12-05T10:00:00+00:00"}, {"started_at": "2026-12-06T10:00:00+00:00"}]
    assert post_mod._post_date(M, recs) == "2026-12-06T10:00:00+00:00"  # first publication: the newest record
    page = tmp_path / "index.md"
    page.write_text('+++\ndate = "2026-11-30T09:00:00+00:00"\ntitle = "x"\n+++\nbody\n')
    assert post_mod._post_date(M, recs, page) == "2026-11-30T09:00:00+00:00"
    page.write_text('+++\ndate = "<script>"\n+++\n')
    assert post_mod._post_date(M, recs, page) == "2026-12-06T10:00:00+00:00"
    fm = post_mod.front_matter(load_sample_manifest(tmp_path), "2026-11-30", [{"date": "2026-12-07", "base": "a",
                                                                                "changes": ["x"]}])
    assert 'lastmod = "2026-12-07"' in fm and 'date = "2026-11-30"' in fm


def load_sample_manifest(tmp_path):
    from tests.support.sample import sample_without_content
    return load(sample_without_content(tmp_path))


def test_addresses_in_others_text_are_not_linkified():
    """goldmark's linkify reads 'https://', 'www.' and 'a@b' in the source: none is left there, and each
    still renders as the character it was (a character reference, an escaped '.')."""
    assert md_text("see https://x.example/p") == "see https&#58;//x.example/p"
    assert md_text("www.x.example and me@x.example") == "www\\.x.example and me&#64;x.example"
    assert md_text("awww.x 6.1.0 a:b") == "awww.x 6.1.0 a:b"  # not a link, untouched
    html = markdown_to_safe_html(str(md_text("https://x.example www.x.example me@x.example")))
    import html as html_lib

    assert "https://x.example www.x.example me@x.example" in html_lib.unescape(html) and "<a" not in html
