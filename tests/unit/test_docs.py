"""The README and the reference in docs/ stay true where they point or name: every link resolves to a file
and a heading that exist, every document is reachable from the README, the first 100 lines of the README
carry a newcomer's whole story, and `make help` names every command the tool has."""
from __future__ import annotations

import re
import subprocess

import pytest

from tests.support import ROOT

DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def links(page) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_resolves_to_a_file_and_a_heading(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists() or not dest.resolve().is_relative_to(ROOT):
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(target)
    assert not broken, f"{page.name}: links that lead nowhere: {broken}"


def test_every_document_is_reachable_from_the_readme():
    named = {(ROOT / t.partition("#")[0]).resolve() for t in links(ROOT / "README.md") if t.startswith("docs/")}
    assert DOCS and set(DOCS) <= named, f"not linked from README: {sorted(set(DOCS) - named)}"


def test_the_first_100_lines_tell_a_newcomers_whole_story():
    first = "\n".join((ROOT / "README.md").read_text().splitlines()[:100])
    for needed in ("make report", "make test", "pipx install", "memballoon predict --guest \"Debian 12\"",
                   "memballoon validate", "EXP=", "memballoon audit", "--format prometheus", "SITE=",
                   "memballoon compare", "--only"):
        assert needed in first, f"the README's first 100 lines do not say {needed!r}"


def test_make_help_names_every_command():
    from generator.cli import parser

    commands = set(parser()._subparsers._group_actions[0].choices)
    text = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout
    said = set(re.findall(r"^  ([a-z][a-z, ]+?)\s{2,}", text, re.M))
    named = {w.strip() for line in said for w in line.split(",")}
    assert commands <= named, f"make help does not name: {sorted(commands - named)}"


def test_the_readme_says_how_many_tests_make_test_runs():
    import sys

    said = re.search(r"make test +# the test suite: ([0-9,]+) tests", (ROOT / "README.md").read_text())
    assert said, "the README's quick start no longer says how many tests make test runs"
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:randomly", "tests"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    collected = re.search(r"^([0-9]+) tests? collected", out.stdout, re.M)
    assert collected, out.stdout[-500:]
    assert int(said.group(1).replace(",", "")) == int(collected.group(1))
