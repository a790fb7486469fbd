"""One post: its inputs read and hashed (records as bytes, prose, templates, the code that draws
it), then, if they changed, its records parsed into series and its outputs planned: the page
(rendered first, so only the graphs it shows are drawn), its graphs and its preview."""
from __future__ import annotations

import base64
import datetime as _dt
import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import __version__
from .. import results as results_mod
from ..errors import UserError
from ..gitrepo import git, git_toplevel
from ..manifest import FACTORS, Manifest, project_root
from ..plan import points, results_dir
from ..results import as_record
from ..safe import inside, is_inside, read_regular
from . import claims, graphs, updates
from .analysis import Data
from .series import build_series, timeline_facts
from .engine import PROJECT_DIR, STATE_VERSION, Output, code_hash, code_of, hash_of
from .templating import jinja_env, render, render_with_summary, templates_dir

DEFAULT_CONTENT = "default-post.md.j2"  # the post of a manifest without post.content


def results_commit(folder: Path, root: Path) -> str | None:
    """The last git commit that touched the results folder, '+dirty' if it has uncommitted changes.

    git runs against the repository holding the project `root`, never inside the results folder."""
    try:
        top = git_toplevel(Path(root).resolve())
        folder = Path(folder).resolve()
        if top is None or not is_inside(folder, top):
            return None
        rel = os.path.relpath(folder, top)
        out = git(top, "log", "-1", "--format=%H", "--", rel)
        commit = out.stdout.strip()
        if out.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40,64}", commit):
            return None
        dirty = git(top, "status", "--porcelain", "--untracked-files=all", "--", rel).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None



# What a post sees of each record: its summary (results.RECORD says which fields). The bulky parts
# (meminfo, the balloon timeline, the console) stay in the JSON files; keeping them out of memory is
# what lets 10,000 records build in little memory.
_DMESG_KEEP = re.compile(r"Memory:|software IO TLB|swiotlb|crashkernel|Xen: \[mem")


def summary(record: dict, keep: frozenset) -> dict:
    """A record cut to the fields in `keep`; repeated text (versions, names) shared, not copied 10,000 times."""
    record = as_record(record)
    out = results_mod.Record(
        (k, sys.intern(v) if isinstance(v, str) and len(v) < 100 else v) for k, v in record.items() if k in keep)
    out["dmesg"] = [line for line in (record.dmesg or []) if _DMESG_KEEP.search(line)]
    if record.balloon:
        out["balloon"] = {k: v for k, v in record.balloon.items() if k in ("actual", "available")}
    out.update(timeline_facts(record))  # of the timeline, only the two numbers a post uses
    return out


def _read_records(manifest: Manifest, folder: Path) -> list[tuple]:
    """(point, path, sha of its key and bytes) of every planned point that has a record. The bytes
    are not kept: an unchanged post never needs them, and a changed one reads them again."""
    found = []
    base = folder.resolve()
    for p in points(manifest):
        path = p.record_path(folder)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):  # only a symlink needs resolving to stay inside the folder
            inside(path, base, "result file")
        found.append((p, path, hash_of(p.key, read_regular(path, results_mod.MAX_RECORD_BYTES, "result file"))))
    return found


def _parse_records(found: list) -> list[dict]:
    """The records' summaries, read again and checked against the digests the build is keyed on."""
    records = []
    keep = frozenset(results_mod.summary_fields()) | {f.name for f in FACTORS}  # what a post uses, decided once
    for p, path, digest in found:
        data = read_regular(path, results_mod.MAX_RECORD_BYTES, "result file")
        if hash_of(p.key, data) != digest:
            raise UserError(f"{path}: changed while the site was being built; build again")
        record = results_mod.parse_record(data, path)
        results_mod.check_identity(record, p, path)
        records.append(summary(record, keep))
    return records


# --- front matter ------------------------------------------------------------------------------------
def front_matter(manifest: Manifest, date: str, updates: list[dict] | None = None, draft: bool = False,
                 summary: str = "") -> str:
    """TOML between +++ lines, the keys shaped like the 2012 post's, written by a TOML library. Keys the
    manifest leaves empty are left out; a post without data is a draft, which Hugo does not publish."""
    import tomli_w

    post = manifest.post
    fm = {
        "Categories": list(post.categories),
        "Description": summary or post.description,
        "Tags": list(post.tags),
        "date": date,
        "menu": post.menu,
        "title": post.title,
        "aliases": list(post.aliases),
    }
    for key in ("Description", "menu"):
        if not fm[key]:
            del fm[key]
    if draft:
        fm["draft"] = True
    if updates:  # what changed at each republication, newest first (updates.py); Hugo's lastmod follows it
        fm["lastmod"] = updates[0]["date"]
        fm["updates"] = updates
    return "+++\n" + tomli_w.dumps(fm) + "+++\n"


def _post_date(manifest: Manifest, records: list[dict], page: Path | None = None) -> str:
    """The publication date: the manifest's, else the one the published page already carries (a
    republication moves `lastmod`, not `date`), else the newest record's (the first publication)."""
    records = [as_record(r) for r in records]
    if manifest.post.date:
        return manifest.post.date
    published = _published_date(page) if page is not None else ""
    if published:
        return published
    stamps = sorted(r.started_at for r in records if r.started_at)
    if stamps:
        return stamps[-1]
    return _dt.date.today().isoformat()


def _published_date(page: Path) -> str:
    """The `date` of a page this tool published before ('' if none or unreadable)."""
    import tomllib

    try:
        text = page.read_text(errors="replace")[:65536]
    except OSError:
        return ""
    if not text.startswith("+++\n") or "\n+++\n" not in text[4:]:
        return ""
    try:
        date = tomllib.loads(text[4:text.index("\n+++\n", 4)]).get("date")
    except (tomllib.TOMLDecodeError, ValueError):
        return ""
    value = date.isoformat() if hasattr(date, "isoformat") else str(date or "")
    return value if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[0-9T:.+-]{0,24}Z?", value) else ""


# --- one post ----------------------------------------------------------------------------------------
@dataclass
class PostPlan:
    """What one post's build needs before anything is parsed: its files' bytes and their hash."""

    manifest: Manifest
    slug: str
    layout: str
    folder: Path
    raw: list            # (point, path, digest) of its records
    digests: list        # one per record: sha of (point key, bytes)
    commit: str | None
    content_path: Path
    inputs: str          # hash of everything the post is made from


def post_inputs(manifest: Manifest, *, results_override: str | None, layout: str | None) -> PostPlan:
    """Read a post's inputs (records as bytes, prose, templates, code) and hash them, without parsing."""
    folder = results_dir(manifest, results_override)
    raw = _read_records(manifest, folder)
    digests = [digest for _, _, digest in raw]
    layout = layout or manifest.post.layout
    if manifest.post.content:
        content_path = Path(manifest.post.content)
        if not content_path.is_file():
            raise UserError(f"{manifest.path}: post.content {content_path} does not exist")
        inside(content_path, project_root(Path(manifest.path)), "post.content")
    else:
        content_path = templates_dir() / DEFAULT_CONTENT
    commit = results_commit(folder, project_root(Path(manifest.path)))
    template_files = sorted(templates_dir().glob("*"))
    inputs = hash_of(__version__, str(STATE_VERSION), manifest.sha256, layout, content_path.read_bytes(), str(commit),
                     code_hash(*code_of("publish/post.py")),
                     *[f.name.encode() + f.read_bytes() for f in template_files], *digests)
    return PostPlan(manifest, manifest.post.slug, layout, folder, raw, digests, commit, content_path, inputs)


def plan_post(plan: PostPlan, *, site: Path, outputs: dict[Path, Output], previews: bool = True) -> bool:
    """Add this post's outputs (not yet rendered) to `outputs`; two outputs to one path is an error.
    Returns whether the post has data (a post without is a draft)."""
    manifest, slug, layout, folder, commit = plan.manifest, plan.slug, plan.layout, plan.folder, plan.commit
    records = _parse_records(plan.raw)
    digests = plan.digests
    labels = {g.name: g.label for g in manifest.guests}
    series = build_series(records, labels, len(manifest.hosts))
    data = Data(records, series, planned=len(points(manifest)), guest_order=[g.name for g in manifest.guests],
                host_order=[h.name for h in manifest.hosts])
    if layout == "bundle":
        page = site / "content" / "posts" / slug / "index.md"
        img_dir, img_url = page.parent, ""
    else:
        page = site / "content" / "posts" / f"{slug}.md"
        img_dir, img_url = site / "static" / "img", "/img/"
    by_key = dict(zip([_record_key(r) for r in records], digests))
    plot_code = code_hash(*code_of("publish/graphs.py"), *code_of("publish/analysis.py"))

    def add(path: Path, inputs: str, render: Callable | None, job: tuple | None = None) -> None:
        if path in outputs:
            raise UserError(f"two outputs to one path: {path} (from {outputs[path].source} and {manifest.path}); "
                            "give the posts different post.slug values")
        outputs[path] = Output(path, inputs, render, slug, manifest.path, job=job)

    figures: dict[str, dict] = {}
    graphs_of: dict[str, tuple] = {}  # file name -> (inputs, job): drawn only if the page shows it
    if data.has_data:
        post = graphs.PostData(data, series, slug, lambda rs: sorted(by_key[_record_key(r)] for r in rs),
                               sorted(digests))
        for graph, fig in graphs.figures_of(post):
            figures[fig.key] = {"file": fig.file, "url": img_url + fig.file, "alt": fig.alt, "title": fig.title}
            graphs_of[fig.file] = (hash_of(plot_code, *fig.inputs), (graph.name, fig.args))

    content_path = plan.content_path

    def page_text() -> bytes:
        env = jinja_env(content_path.parent)
        changes = updates.entries(manifest, folder, page, records, {s.guest: s.guest_label for s in series}) \
            if data.has_data else []
        context = {"post": manifest.post, "manifest": manifest, "data": data, "figures": figures,
                   "results_commit": commit, "results_dir": display_path(folder), "layout": layout,
                   "tool_version": __version__, "updates": changes, "update_headline": updates.headline}
        from markupsafe import Markup

        with claims.recording() as ledger:
            body, summary = render_with_summary(env, content_path.name, str(content_path), **context) \
                if data.has_data else ("", "")
            text = render(env, "post.md.j2", str(templates_dir() / "post.md.j2"),
                          front_matter=Markup(front_matter(manifest, _post_date(manifest, records, page), changes,
                                                           draft=not data.has_data, summary=summary)),
                          body=Markup(body),
                          **context)
        return text.encode(), ledger.to_json(slug).encode()

    # The page first (cheap): only the graphs it shows are drawn and written, so a bundle holds
    # nothing that no page shows.
    page_bytes, claims_bytes = page_text()
    figures_used = {}
    for key, fig in figures.items():
        if f"]({fig['url']} ".encode() in page_bytes:
            figures_used[key] = fig
            inputs, job = graphs_of[fig["file"]]
            add(img_dir / fig["file"], inputs, None, job)
    figures = figures_used

    def render_page(_markdown) -> bytes:
        return page_bytes


    add(page, plan.inputs, render_page)
    if not previews:  # someone's own blog: the page and its graphs only, nothing at the blog's root
        return data.has_data
    if data.has_data:
        # every number the page states, with the query of the records it answers (claims.py)
        add(site / "claims" / f"{slug}.json", plan.inputs, lambda _markdown: claims_bytes)
    preview = site / "previews" / f"{slug}.html"

    def render_preview(markdown) -> bytes:
        """The page as one HTML file with its graphs inlined, assembled as bytes: a big post's preview
        (hundreds of base64 graphs) is never copied around as one large string."""
        from markupsafe import Markup

        text = outputs[page].data.decode()
        body_md = re.sub(r"\A\+\+\+\n.*?\n\+\+\+\n", "", text, flags=re.S)
        html = markdown(body_md).encode()
        env = jinja_env(content_path.parent)
        marker = "\0memballoon-preview-body\0"  # no text from a manifest can hold a NUL
        shell = render(env, "preview.html.j2", str(templates_dir() / "preview.html.j2"), post=manifest.post,
                        html=Markup(marker)).encode()
        head, tail = shell.split(marker.encode(), 1)
        inline = {f'src="{fig["url"]}"'.encode(): outputs[img_dir / fig["file"]].data for fig in figures.values()}
        parts, pos = [head], 0
        if inline:  # one pass over the page, however many graphs
            pattern = re.compile(b"|".join(re.escape(k) for k in sorted(inline, key=len, reverse=True)))
            for m in pattern.finditer(html):
                parts += [html[pos:m.start()], b'src="data:image/png;base64,', base64.b64encode(inline[m.group(0)]),
                          b'"']
                pos = m.end()
        parts += [html[pos:], tail]
        return b"".join(parts)

    add(preview, hash_of("preview", plan.inputs, *[outputs[img_dir / f["file"]].inputs for f in figures.values()]),
        render_preview)
    return data.has_data


def _record_key(r: dict) -> str:
    return "/".join(str(r.get(name)) for name in ["host", "guest", "repeat"] + [f.name for f in FACTORS])


def display_path(folder: Path) -> str:
    try:
        return str(folder.resolve().relative_to(PROJECT_DIR))
    except ValueError:
        return folder.name
