""""What changed" entries (generator/publish/updates.py) and the published commit."""
from __future__ import annotations

from pathlib import Path

from generator import results
from generator.manifest import load
from generator.plan import points
from tests.support import ROOT, git  # noqa: F401
from tests.support.sample import MANIFEST, record  # noqa: F401


def test_points_the_manifest_no_longer_plans_are_not_news(tmp_path):
    """A guest dropped from the manifest (its records still in the folder): the rebuilt post gains no entry."""
    from generator.publish.build import build_all
    from tests.support.sample import new_site

    project = tmp_path / "project"
    folder = project / "experiments" / "sample"
    folder.mkdir(parents=True)
    (folder / "post.md").write_text("{% import 'macros.md.j2' as m %}\n{{ m.provenance(data, manifest, "
                                    "results_commit, results_dir, tool_version) }}\n")
    manifest = folder / "experiment.yaml"
    manifest.write_text(MANIFEST.format(slug="sample", title="t", content="post.md"))
    site = new_site(project)
    m = load(manifest)
    for p in points(m):
        results.write_record(p.record_path(Path(m.results)), {**record(p.guest, p.memory_mib, p.repeat), **p.factors})
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "first")
    build_all([m], site=site, quiet=True)
    git(project, "add", "-A")
    git(project, "commit", "-qm", "published")
    manifest.write_text(manifest.read_text().replace("  - {name: rhel6, label: RHEL6}\n", ""))
    m = load(manifest)
    build_all([m], site=site, quiet=True)
    page = (site / "content" / "posts" / "sample" / "index.md").read_text()
    assert "What changed" not in page and "[[updates]]" not in page


def test_update_entries_from_an_edited_page_are_checked(tmp_path):
    """The published page is read back: malformed or hostile entries in its front matter are dropped."""
    from generator.publish.updates import MAX_LINES, previous

    page = tmp_path / "index.md"
    good = '[[updates]]\ndate = "2026-12-01"\nbase = "0123456789ab"\nchanges = ["a"]\n'
    bad = ('[[updates]]\ndate = "tomorrow"\nbase = "0123456789ab"\nchanges = ["x"]\n'
           '[[updates]]\ndate = "2026-12-01"\nbase = "../../etc/passwd"\nchanges = ["x"]\n'
           '[[updates]]\ndate = "2026-12-01"\nbase = "0123456789ab"\nchanges = [1, 2]\n')
    many = '[[updates]]\ndate = "2026-11-01"\nbase = "ba9876543210"\nchanges = [' + ", ".join(
        '"l"' for _ in range(MAX_LINES + 50)) + "]\n"
    page.write_text("+++\ntitle = 't'\n" + good + bad + many + "+++\n\n- Raw results: 1 JSON records in `r`, "
                    "git commit `0123456789ab`.\n")
    entries, commit = previous(page)
    assert commit == "0123456789ab"
    assert [e["date"] for e in entries] == ["2026-12-01", "2026-11-01"]
    assert len(entries[1]["changes"]) == MAX_LINES
    page.write_text("+++\nnot = [toml\n+++\n")
    assert previous(page) == ([], None)


def test_the_published_commit_is_read_from_the_provenance_line_only():
    from generator.publish.compare import commit_named_in

    page = ("+++\ntitle = \"git commit `aaaaaaaaaaaa`\"\n+++\n\nProse naming git commit `bbbbbbbbbbbb` in passing.\n"
            "- Raw results: 3 JSON records in `r`, git commit `cccccccccccc`.\n"
            "- a record's text \\`git commit \\`dddddddddddd\\`\n")
    assert commit_named_in(page) == "cccccccccccc"


def test_how_many_changes_are_readings_is_kept_only_when_it_can_be_true(tmp_path):
    from generator.publish.updates import previous

    page = tmp_path / "index.md"
    entry = '[[updates]]\ndate = "2026-12-0{d}"\nbase = "0123456789ab"\nchanges = ["a", "b"]\n{extra}'
    page.write_text("+++\n" + entry.format(d=1, extra="readings = 1\n") + entry.format(d=2, extra="readings = 9\n")
                    + entry.format(d=3, extra="readings = true\n") + entry.format(d=4, extra="") + "+++\n")
    entries, _ = previous(page)
    # a count that cannot be true is not kept: the readings are the lines before the first version line
    assert [e.get("readings") for e in entries] == [1, 2, 2, 2]
    page.write_text("+++\n" + entry.replace('["a", "b"]', '["Newly measured: x (saw 5 MiB).", '
                                           '"guest kernel on local/debian: 6.1.0-56-amd64 then, 6.1.0-57-amd64 now.", '
                                           '"host kernel on local: v1045 now as well (v669 throughout).", '
                                           '"QEMU on kvm1: no longer 8.2.0."]').format(d=1, extra="") + "+++\n")
    entries, _ = previous(page)
    assert entries[0]["readings"] == 1


def test_the_notice_counts_what_kind_of_change_each_reading_is(tmp_path):
    from generator.publish.updates import headline

    entry = {"changes": ["Newly measured: Debian 13 on KVM at 8 GiB (saw 824 MiB).",
                         "Newly measured: Debian 13 on KVM at 16 GiB (saw 764 MiB).",
                         "Debian 12 on QEMU (TCG) at 4 GiB now sees 843 MiB, 3 MiB less than on 2026-12-02.",
                         "Debian 12 on QEMU (TCG) at 64 GiB: ran out of memory on 2026-12-02, now saw 435 MiB.",
                         "guest kernel on local/debian: 6.1.0-56-amd64 then, 6.1.0-57-amd64 now."], "readings": 4}
    assert headline(entry) == [(2, "points newly measured"), (1, "reading moved"), (1, "outcome changed")]
    assert headline({"changes": entry["changes"][4:], "readings": 0}) == []  # versions only: no notice
    # an entry written before counts were kept: its version lines, of every shape provenance_lines() writes,
    # are not readings
    from generator.publish.updates import previous
    import tomli_w

    page = tmp_path / "index.md"
    old_entry = {"date": "2026-12-01", "base": "0123456789ab", "changes": [
        "Newly measured: Debian 13 on KVM at 8 GiB (saw 824 MiB).",
        "host kernel on local: v1045 now as well (v669 throughout).",
        "QEMU on kvm1: 8.2.0 then, 9.0.0 now (7.2 throughout).",
        "QEMU on kvm1: 8.2.0 then, 9.0.0 now.",
        "libvirt on kvm1: no longer 9.0.0 (9.1.0 throughout)."]}
    page.write_text("+++\n" + tomli_w.dumps({"updates": [old_entry]}) + "+++\n")
    entries, _ = previous(page)
    assert entries[0]["readings"] == 1 and headline(entries[0]) == [(1, "point newly measured")]
    assert headline({"changes": ["something else entirely"], "readings": 1}) == [(1, "change")]


def test_versions_are_said_once_what_came_and_what_went():
    from types import SimpleNamespace

    from generator.publish.updates import provenance_lines

    c = SimpleNamespace(provenance=[
        {"what": "host kernel", "where": "local", "old": ["v669"], "new": ["v1045", "v669"]},
        {"what": "QEMU", "where": "kvm1", "old": ["8.2.0"], "new": ["9.0.0"]},
        {"what": "libvirt", "where": "kvm1", "old": ["9.0.0", "9.1.0"], "new": ["9.1.0"]},
        {"what": "guest kernel", "where": "kvm1", "old": ["6.1"], "new": ["6.1"]}])
    assert provenance_lines(c) == ["host kernel on local: v1045 now as well (v669 throughout).",
                                   "QEMU on kvm1: 8.2.0 then, 9.0.0 now.",
                                   "libvirt on kvm1: no longer 9.0.0 (9.1.0 throughout)."]
