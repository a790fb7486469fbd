"""Build: render each manifest's post from content/ through templates/ into the Hugo site.

One straight function per post: gather the inputs, decide from content hashes which outputs are
stale, render those in memory (so a failure writes nothing), then write what changed. A rebuild
with unchanged inputs renders nothing and does not import matplotlib.
"""
from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import __version__
from .. import results as results_mod
from ..results import as_record
from . import updates
from .analysis import Data, build_series, timeline_facts
from ..errors import UserError
from ..manifest import FACTORS, Manifest, project_root
from ..gitrepo import git, git_toplevel
from ..safe import inside, is_inside, read_regular, write_all_beneath
from ..plan import points, results_dir
from ..units import mib_label

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # generator/
PROJECT_DIR = PACKAGE_DIR.parent
DEFAULT_CONTENT = "default-post.md.j2"  # the post of a manifest without post.content
STATE_VERSION = 3  # 2: each output names its post (a build removes only its posts' outputs); 3: post input hashes
MAX_STATE_BYTES = 8 * 1024 * 1024


@dataclass
class Output:
    """One file the build produces: where, what it depends on, and how to make its bytes.

    A graph has a `job` (a plots function's name and its arguments, all picklable) so that graphs
    render in worker processes; pages and previews have `render`, run in this process."""

    path: Path
    inputs: str
    render: Callable[[Callable[[str], str]], bytes] | None  # given a Markdown-to-HTML function
    post: str      # the post's slug: a build removes only outputs of the posts it built
    source: str    # the manifest it comes from, for messages
    data: bytes | None = None
    job: tuple | None = None


@dataclass
class BuildReport:
    written: list = field(default_factory=list)
    unchanged: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    removed: list = field(default_factory=list)
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)  # where the time went: inputs, parse, render, write


def _sha(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


def _code_hash(*names: str) -> str:
    return _sha(__version__, *[(PACKAGE_DIR / n).read_bytes() for n in names])


def templates_dir() -> Path:
    return PROJECT_DIR / "templates"


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
SUMMARY_FIELDS = results_mod.SUMMARY_FIELDS
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
        found.append((p, path, _sha(p.key, read_regular(path, results_mod.MAX_RECORD_BYTES, "result file"))))
    return found


def _parse_records(found: list) -> list[dict]:
    """The records' summaries, read again and checked against the digests the build is keyed on."""
    records = []
    keep = frozenset(SUMMARY_FIELDS) | {f.name for f in FACTORS}  # what a post uses, decided once
    for p, path, digest in found:
        data = read_regular(path, results_mod.MAX_RECORD_BYTES, "result file")
        if _sha(p.key, data) != digest:
            raise UserError(f"{path}: changed while the site was being built; build again")
        record = results_mod.parse_record(data, path)
        results_mod.check_identity(record, p, path)
        records.append(summary(record, keep))
    return records


# --- Jinja -------------------------------------------------------------------------------------------
# Values from manifests, records and guests are text, never Markdown, HTML or Hugo: every {{ value }} is
# escaped for Markdown (the characters that make links, code spans, table cells, emphasis and escapes),
# for HTML (entities) and for Hugo, whose shortcodes ({{< x >}}, {{% x %}}) are found in the raw page
# before Markdown is parsed, in text and code spans alike. Templates and macros are trusted; what they
# output is not escaped again.
#
# In text a '{' is escaped ('\{', which Markdown shows as '{') when it could make or complete a
# shortcode opener: when it starts the value or follows another '{', and ends the value or precedes
# '{', '%' or '<'. So no '{{<' or '{{%' is left in a value, nor made where two values meet; a '{' in
# ordinary text ('a {x}', 'a {{ y }}') is left as it is. '_' is escaped only where it could start or end
# emphasis (not inside a word, as in 'virtio_balloon').
_MD_TEXT = re.compile(r"""[\\`\[\]|*~&<>"]|(?<![^\W_])_|_(?![^\W_])|(?:^|(?<=\{))\{(?=[{%<]|$)""")
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}


def md_text(value) -> "Markup":
    """A value as literal Markdown text: Markdown's specials backslash-escaped, HTML's as entities, and
    no Hugo shortcode opener left (see above)."""
    from markupsafe import Markup

    if isinstance(value, Markup):
        return value
    text = " ".join(str(value).splitlines())
    return Markup(_MD_TEXT.sub(lambda m: _ENTITIES.get(m.group(0)) or "\\" + m.group(0), text))


# In a code span nothing can be escaped (a backslash or an entity would show as typed): a shortcode
# opener is broken by a zero-width space between its braces, and Hugo's summary divider by one after
# its '<'. Both render as the text they were, and Hugo finds neither.
_CODE_HUGO = re.compile(r"\{\{+(?=[<%])|<(?=!--more-->)")
ZERO_WIDTH_SPACE = "\u200b"


def md_code(value) -> "Markup":
    """A value as a Markdown code span, fenced by more backticks than it contains (no escaping applies
    inside a code span, so none is done; Hugo's openers are broken, see above)."""
    from markupsafe import Markup

    text = " ".join(str(value).splitlines())
    text = _CODE_HUGO.sub(lambda m: ZERO_WIDTH_SPACE.join(m.group(0)) + (ZERO_WIDTH_SPACE if m.group(0) == "<" else ""),
                          text)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return Markup(f"{fence}{pad}{text}{pad}{fence}")


def _truncate(env, value, *args, **kwargs):
    """Jinja's truncate, for text that is not yet escaped: cutting escaped text could cut an escape
    (a '\\{' or '&lt;') in half, so truncate before md_escape or code, never after."""
    import jinja2.filters
    from markupsafe import Markup

    if isinstance(value, Markup):
        raise ValueError("truncate the value before escaping it (value | truncate(n) | code), not after")
    return jinja2.filters.do_truncate(env, value, *args, **kwargs)


def _finalize(value):
    from markupsafe import Markup

    if value is None or isinstance(value, (Markup, int, float)):
        return value
    return md_text(value)


def _jinja_env(content_dir: Path):
    """A sandboxed environment: content files may come from someone else and get no Python access."""
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(
        loader=jinja2.FileSystemLoader([str(content_dir), str(templates_dir())]),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=True, finalize=_finalize,
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.do"])
    env.filters["mib"] = mib_label
    env.filters["num"] = lambda v, digits=0: "n/a" if v is None else f"{v:,.{digits}f}"
    env.filters["md_escape"] = md_text
    env.filters["code"] = md_code
    env.filters["truncate"] = jinja2.pass_environment(_truncate)
    return env


def _template_error(e: Exception, fallback: str) -> UserError:
    import jinja2

    if isinstance(e, jinja2.TemplateSyntaxError):
        return UserError(f"{e.filename or fallback}:{e.lineno}: template error: {e.message}")
    where = fallback
    for frame in reversed(traceback.extract_tb(e.__traceback__)):
        if frame.filename.endswith((".md", ".j2", ".html")):
            where = f"{frame.filename}:{frame.lineno}"
            break
    message = getattr(e, "message", None) or str(e)
    return UserError(f"{where}: template error: {type(e).__name__}: {message}")


def _render_with_summary(env, name: str, fallback: str, **context) -> tuple[str, str]:
    """The page's body, and its `summary` (what a content file sets with {% set summary %}…{% endset %}:
    its answer in a few sentences, shown first and carried into the front matter's description).
    Rendered as usual first (errors name the file and line), then as a module for the summary."""
    body = _render(env, name, fallback, **context)
    template = env.get_template(name)
    if "summary" not in env.loader.get_source(env, name)[0]:
        return body, ""
    try:
        summary = getattr(template.make_module(context), "summary", "")
    except Exception as e:  # noqa: BLE001 - it rendered once already; say where if not
        raise _template_error(e, fallback) from None
    return body, plain_summary(str(summary)) if summary else ""


_MD_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")


def plain_summary(markdown: str) -> str:
    """A summary written in Markdown, as the plain text of a description (listings, link previews)."""
    text = _MD_LINK.sub(r"\1", markdown)
    text = re.sub(r"(\*\*|__|`)", "", text)
    text = re.sub(r"\\([\\`*_{}\[\]()#+\-.!|<>&\"~])", r"\1", text)
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")
    return " ".join(text.split())


def _render(env, name: str, fallback: str, **context) -> str:
    import jinja2

    try:
        return env.get_template(name).render(**context)
    except jinja2.TemplateNotFound as e:
        raise UserError(f"{fallback}: template {e.name!r} not found in {templates_dir()}") from None
    except Exception as e:  # noqa: BLE001 - every template failure is reported with file and line
        raise _template_error(e, fallback) from None


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
    if updates:  # what changed at each republication, newest first (updates.py)
        fm["updates"] = updates
    return "+++\n" + tomli_w.dumps(fm) + "+++\n"


def _post_date(manifest: Manifest, records: list[dict]) -> str:
    records = [as_record(r) for r in records]
    if manifest.post.date:
        return manifest.post.date
    stamps = sorted(r.started_at for r in records if r.started_at)
    if stamps:
        return stamps[-1]
    return _dt.date.today().isoformat()


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
    inputs = _sha(__version__, str(STATE_VERSION), manifest.sha256, layout, content_path.read_bytes(), str(commit),
                  _code_hash("publish/build.py", "publish/analysis.py", "publish/plots.py", "publish/updates.py",
                             "publish/compare.py", "predict.py", "hypervisors/__init__.py",
                             "hypervisors/base.py", "hypervisors/qemu.py", "hypervisors/xen.py"),
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
    plot_code = _code_hash("publish/plots.py", "publish/analysis.py")

    def add(path: Path, inputs: str, render: Callable | None, job: tuple | None = None) -> None:
        if path in outputs:
            raise UserError(f"two outputs to one path: {path} (from {outputs[path].source} and {manifest.path}); "
                            "give the posts different post.slug values")
        outputs[path] = Output(path, inputs, render, slug, manifest.path, job=job)

    figures: dict[str, dict] = {}
    graphs: dict[str, tuple] = {}  # file name -> (inputs, job): drawn only if the page shows it
    if data.has_data:
        for s in series:
            if not s.measured and not s.failed:
                continue
            deps = sorted(by_key[_record_key(r)] for p in s.points for r in p.records)
            name = f"{s.file_stem}.png"
            figures[s.key] = {"file": name, "url": img_url + name, "alt": s.alt_text(), "title": s.title}
            graphs[name] = (_sha(plot_code, "series", s.title, *deps), ("series_png", (s.lean(),)))
        for c in data.comparisons:  # one guest on several hypervisors, side by side
            deps = sorted(by_key[_record_key(r)] for x in c["series"] for p in x.points for r in p.records)
            name = f"{c['stem']}.png"
            figures[c["key"]] = {"file": name, "url": img_url + name, "title": c["title"],
                                 "alt": _all_alt(c["series"])}
            graphs[name] = (_sha(plot_code, "compare", c["title"], *deps),
                            ("all_series_png", ([x.lean() for x in c["series"]], c["title"])))
        everything = sorted(digests)
        if len(series) > 1:
            all_name = f"{slug}-all-guests.png"
            figures["all"] = {"file": all_name, "url": img_url + all_name, "title": "Every series",
                              "alt": _all_alt(series)}
            lean = [s.lean() for s in series]
            graphs[all_name] = (_sha(plot_code, "all", *everything), ("all_series_png", (lean,)))
        fits = [s.fit() for s in series]
        lost_name = f"{slug}-memory-lost.png"
        figures["lost"] = {"file": lost_name, "url": img_url + lost_name, "title": "Memory lost",
                           "alt": _lost_alt(series, fits)}
        graphs[lost_name] = (_sha(plot_code, "lost", *everything), ("lost_png", ([s.lean() for s in series], fits)))

    content_path = plan.content_path

    def page_text() -> bytes:
        env = _jinja_env(content_path.parent)
        changes = updates.entries(manifest, folder, page, records, {s.guest: s.guest_label for s in series}) \
            if data.has_data else []
        context = {"post": manifest.post, "manifest": manifest, "data": data, "figures": figures,
                   "results_commit": commit, "results_dir": _display_path(folder), "layout": layout,
                   "tool_version": __version__, "updates": changes}
        from markupsafe import Markup

        body, summary = _render_with_summary(env, content_path.name, str(content_path), **context) \
            if data.has_data else ("", "")
        text = _render(env, "post.md.j2", str(templates_dir() / "post.md.j2"),
                       front_matter=Markup(front_matter(manifest, _post_date(manifest, records), changes,
                                                        draft=not data.has_data, summary=summary)),
                       body=Markup(body),
                       **context)
        return text.encode()

    # The page first (cheap): only the graphs it shows are drawn and written, so a bundle holds
    # nothing that no page shows.
    page_bytes = page_text()
    figures_used = {}
    for key, fig in figures.items():
        if f"]({fig['url']} ".encode() in page_bytes:
            figures_used[key] = fig
            inputs, job = graphs[fig["file"]]
            add(img_dir / fig["file"], inputs, None, job)
    figures = figures_used

    def render_page(_markdown) -> bytes:
        return page_bytes


    add(page, plan.inputs, render_page)
    if not previews:
        return data.has_data
    preview = site / "previews" / f"{slug}.html"

    def render_preview(markdown) -> bytes:
        """The page as one HTML file with its graphs inlined, assembled as bytes: a big post's preview
        (hundreds of base64 graphs) is never copied around as one large string."""
        from markupsafe import Markup

        text = outputs[page].data.decode()
        body_md = re.sub(r"\A\+\+\+\n.*?\n\+\+\+\n", "", text, flags=re.S)
        html = markdown(body_md).encode()
        env = _jinja_env(content_path.parent)
        marker = "\0memballoon-preview-body\0"  # no text from a manifest can hold a NUL
        shell = _render(env, "preview.html.j2", str(templates_dir() / "preview.html.j2"), post=manifest.post,
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

    add(preview, _sha("preview", plan.inputs, *[outputs[img_dir / f["file"]].inputs for f in figures.values()]),
        render_preview)
    return data.has_data


def _record_key(r: dict) -> str:
    return "/".join(str(r.get(name)) for name in ["host", "guest", "repeat"] + [f.name for f in FACTORS])


def _display_path(folder: Path) -> str:
    try:
        return str(folder.resolve().relative_to(PROJECT_DIR))
    except ValueError:
        return folder.name


def _all_alt(series) -> str:
    """Under ~300 characters: what the graph shows, each series once."""
    parts = []
    for s in series[:6]:
        if s.measured:
            a, b = s.measured[0], s.measured[-1]
            name = s.legend_label if len({x.current_memory_mib for x in series}) == 1 else \
                f"currentMemory {s.current_memory_mib} MiB" if len({x.legend_label for x in series}) == 1 else \
                f"{s.legend_label} at {s.current_memory_mib} MiB"
            text = f"{name}: {a.median:g} MiB at {mib_label(a.memory_mib)}"
            if b is not a:
                text += f", {b.median:g} at {mib_label(b.memory_mib)}"
            died = [p for p in s.failed if p.died]
            if died:
                text += f", dies from {mib_label(died[0].memory_mib)}"
            parts.append(text)
    more = f"; and {len(series) - 6} more" if len(series) > 6 else ""
    return _cap("Memory seen after ballooning against memory: " + "; ".join(parts) + more + ".")


def _lost_alt(series, fits) -> str:
    """Under ~300 characters: the slopes, where the loss stops, where guests die."""
    slopes = sorted({round(f.slope, 1) for f in fits if f})
    flat = [s for s, f in zip(series, fits) if not f and s.measured]
    text = "MiB lost against memory (log scale)"
    if slopes:
        text += f": {slopes[0]:g}" + (f" to {slopes[-1]:g}" if len(slopes) > 1 else "") + \
            f" MiB per GiB for {sum(1 for f in fits if f)} guest(s)"
    if flat:
        worst = max(flat, key=lambda s: s.current_memory_mib - s.measured[-1].median)
        text += f"; {len(flat)} without a straight line, up to {worst.current_memory_mib - worst.measured[-1].median:g} MiB"
    died = sorted({p.memory_mib for s in series for p in s.failed if p.died})
    if died:
        text += f"; guests died from {mib_label(died[0])} (crosses at the top)"
    return _cap(text + ".")


def _cap(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"


# --- the preview: Markdown to HTML as Hugo renders it (raw HTML dropped, unsafe links removed) ---------
_SAFE_URL = re.compile(r"^(https?:|mailto:|#|/|\.{0,2}/|[A-Za-z0-9._~-]+(/|$|\.|#|\?))", re.I)


def markdown_to_safe_html(text: str) -> str:
    """HTML for the preview. Like Hugo's goldmark with unsafe off: raw HTML in the Markdown is shown
    as text (never run), and links or images whose URL is not http(s), mailto or relative are dropped."""
    import markdown
    from markdown.treeprocessors import Treeprocessor

    class DropUnsafeURLs(Treeprocessor):
        def run(self, root):
            for el in root.iter():
                for attr in ("href", "src"):
                    url = el.get(attr)
                    if url is not None and not _SAFE_URL.match(url.strip()):
                        el.set(attr, "")
                for attr in list(el.keys()):
                    if attr.lower().startswith("on"):
                        del el.attrib[attr]

    md = markdown.Markdown(extensions=["tables", "fenced_code"], output_format="html")
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    md.treeprocessors.register(DropUnsafeURLs(md), "drop_unsafe_urls", 0)
    return md.convert(text)


# --- the whole build ---------------------------------------------------------------------------------
HUGO_CONFIGS = ("hugo.toml", "hugo.yaml", "hugo.json", "config.toml", "config.yaml", "config.json", "config")


def state_path(site: Path) -> Path:
    """Where the build remembers what it wrote into `site`: in the cache (MEMBALLOON_CACHE, default
    .cache), one file per site folder, so a blog's root and its git status stay clean."""
    cache = Path(os.environ.get("MEMBALLOON_CACHE", ".cache")).resolve()
    key = hashlib.sha256(str(site.resolve()).encode()).hexdigest()[:16]
    return cache / "build" / f"{site.resolve().name[:40]}-{key}.json"


def _read_state(site: Path, clean: bool) -> tuple[dict, dict]:
    """The previous build's outputs, {site-relative path: {"inputs", "sha256", "post"}}, and each
    post's input hash. Only entries naming a plain relative path inside the site are kept (the file
    may come from someone else)."""
    path = state_path(site)
    if clean or not path.exists():
        return {}, {}
    try:
        state = json.loads(read_regular(path, MAX_STATE_BYTES, "build state").decode("utf-8"))
    except (ValueError, UserError):
        return {}, {}  # a broken state only costs a full build
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or not isinstance(state.get("outputs"), dict):
        return {}, {}
    good = {}
    for rel_path, entry in state["outputs"].items():
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("inputs", "sha256", "post")):
            continue
        parts = Path(rel_path).parts
        if Path(rel_path).is_absolute() or not parts or any(p in ("..", ".") for p in parts) or "\0" in rel_path:
            continue
        if not is_inside((site / rel_path).parent, site):
            continue
        good[rel_path] = entry
    posts = state.get("posts") if isinstance(state.get("posts"), dict) else {}
    return good, {k: v for k, v in posts.items() if isinstance(k, str) and isinstance(v, str)}


def _intact(path: Path, sha: str) -> bytes | None:
    """The file's bytes if it is a regular file with the recorded hash, else None."""
    if not path.is_file() or path.is_symlink():
        return None
    data = path.read_bytes()
    return data if _sha(data) == sha else None


def render_all(stale: list[Output], workers: int) -> None:
    """Render the stale outputs. Graphs go to worker processes (a forkserver that loaded matplotlib
    once) while this process renders the pages; a preview's Markdown is converted by a worker too,
    so the large trees of a big post never live in this process. With one stale graph and nothing
    else to overlap, everything runs here."""
    graphs = [o for o in stale if o.job is not None]
    others = [o for o in stale if o.job is None]
    if len(graphs) <= 1 and workers <= 1 or not graphs:
        for out in graphs:
            from . import plots

            out.data = plots.render(out.job)
        for out in others:
            out.data = out.render(markdown_to_safe_html)
        return
    import multiprocessing
    import signal
    import threading
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures import TimeoutError as FutureTimeout

    os.environ.setdefault("MPLBACKEND", "Agg")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["generator.publish._graph_worker", "generator.publish.plots", "generator.publish.build", "matplotlib.pyplot", "markdown"])
    from . import plots

    # Ctrl-C while the pool is busy: raised asynchronously inside the executor's machinery (a worker
    # being started, a queue being fed), KeyboardInterrupt can leave it waiting forever at shutdown.
    # So while the pool runs, Ctrl-C only sets a flag, and the build raises it here, between two
    # waits, where the pool can be shut down cleanly.
    interrupted = threading.Event()
    catch = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set()) if catch else None

    def result(future):
        while True:
            if interrupted.is_set():
                raise KeyboardInterrupt
            try:
                return future.result(timeout=0.1)
            except FutureTimeout:
                continue

    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_quiet_worker) as pool:
            # the graphs of every series first: they take longest, and must not be left to the end
            futures = [(o, pool.submit(plots.render, o.job))
                       for o in sorted(graphs, key=lambda o: o.job[0] == "series_png")]
            try:
                for out in others:
                    if out.path.suffix == ".html":  # a preview inlines the graphs: wait for them
                        for graph, future in futures:
                            graph.data = result(future)
                    out.data = out.render(lambda text: result(pool.submit(markdown_to_safe_html, text)))
                for graph, future in futures:
                    graph.data = result(future)
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    finally:
        if catch:
            signal.signal(signal.SIGINT, previous)
    if interrupted.is_set():
        raise KeyboardInterrupt


def _quiet_worker() -> None:
    """Graph workers leave Ctrl-C to the main process, which stops the build, leaves the site as it
    was and exits 130; otherwise each worker would print its own traceback."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _page_inputs(outputs: dict[Path, Output], slug: str) -> str | None:
    """A built post's input hash: its page's (the page depends on everything the post is made of)."""
    return next((o.inputs for o in outputs.values() if o.post == slug and o.render is not None and
                 o.path.suffix == ".md"), None)


def _stage_writes(writes: list[Output], site: Path) -> None:
    """Every changed output written all or nothing (safe.write_all_beneath): a failure (disk full)
    leaves the site as it was, and no symlink inside the site is written through."""
    site = site.resolve()
    files = []
    for out in writes:
        try:
            files.append((out.path.resolve().parent.relative_to(site) / out.path.name, out.data))
        except ValueError:
            raise UserError(f"{out.path}: outside the site {site}; nothing was changed in the site") from None
    write_all_beneath(site, files, failed="; nothing was changed in the site")


def build_all(manifests: list[Manifest], *, results_override: str | None = None, site: Path = Path("site"),
              clean: bool = False, layout: str | None = None, quiet: bool = False,
              workers: int | None = None, previews: bool | None = None) -> BuildReport:
    """Render the posts of `manifests` into `site`. Previews (one HTML file per post, graphs inlined)
    go to site/previews/ when that folder exists (the project's site has it) or `previews` is True."""
    t0 = time.monotonic()
    if previews is None:
        previews = (site / "previews").is_dir()
    report = BuildReport()
    if not any((site / name).exists() for name in HUGO_CONFIGS):
        raise UserError(f"{site}: not a Hugo site (no hugo.toml or config.toml); run from the project folder, "
                        "or pass --site with your blog's folder")
    workers = workers or os.cpu_count() or 1
    state, post_hashes = _read_state(site, clean)
    outputs: dict[Path, Output] = {}
    unchanged_posts: dict[str, str] = {}
    for m in manifests:
        t = time.monotonic()
        plan = post_inputs(m, results_override=results_override, layout=layout)
        report.timings["inputs"] = report.timings.get("inputs", 0.0) + time.monotonic() - t
        own = {k: v for k, v in state.items() if v["post"] == plan.slug}
        # a post whose inputs are all as last time and whose every output is intact: nothing to parse
        if post_hashes.get(plan.slug) == plan.inputs and own and \
                all(_intact(site / k, v["sha256"]) is not None for k, v in own.items()):
            unchanged_posts[plan.slug] = plan.inputs
            report.skipped.extend(site / k for k in own)
            continue
        t = time.monotonic()
        if not plan_post(plan, site=site, outputs=outputs, previews=previews) and not quiet:
            print(f"warning: {m.path}: no measured point in {_display_path(plan.folder)} ({len(plan.raw)} record(s)); "
                  "its post is written as a draft, which Hugo does not publish, until a sweep measures one "
                  "(make report)", file=sys.stderr)
        report.timings["parse"] = report.timings.get("parse", 0.0) + time.monotonic() - t
    built_posts = {m.post.slug for m in manifests}

    def rel(p: Path) -> str:
        return str(p.relative_to(site))

    clash = [rel(p) for p in outputs if state.get(rel(p), {}).get("post") in unchanged_posts and
             state[rel(p)]["post"] != outputs[p].post]
    if clash:
        raise UserError(f"two outputs to one path: {site / clash[0]}; give the posts different post.slug values")

    # 1. decide and render, in memory; nothing is written if anything fails
    stale: list[Output] = []
    for out in outputs.values():
        known = state.get(rel(out.path))
        if known and known["inputs"] == out.inputs:
            current = _intact(out.path, known["sha256"])
            if current is not None:
                out.data = current
                report.skipped.append(out.path)
                continue
        stale.append(out)
    try:
        t = time.monotonic()
        render_all(stale, workers)
        if stale:
            report.timings["render"] = time.monotonic() - t
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - say which output failed
        failed = next((o for o in stale if o.data is None), stale[0])
        raise UserError(f"{failed.source}: building {failed.path} failed: {type(e).__name__}: {e}") from e
    # 2. write what changed: all staged first, then moved in together
    writes = []
    for out in outputs.values():
        if out.path in report.skipped:
            continue
        if out.path.is_file() and not out.path.is_symlink() and out.path.read_bytes() == out.data:
            report.unchanged.append(out.path)
            continue
        inside(out.path.parent, site, "output")
        writes.append(out)
    t = time.monotonic()
    _stage_writes(writes, site)
    report.written.extend(out.path for out in writes)
    # 3. remove what an earlier build of these posts wrote and this one no longer makes; outputs of
    #    posts not built this time stay, and stay in the state
    produced = {rel(p) for p in outputs}
    kept = {k: v for k, v in state.items() if (v["post"] not in built_posts or v["post"] in unchanged_posts)
            and k not in produced}
    for old in sorted(set(state) - produced - set(kept)):
        target = site / old
        if target.is_file() or target.is_symlink():
            target.unlink()
            report.removed.append(target)
    entries = {rel(o.path): {"inputs": o.inputs, "sha256": _sha(o.data), "post": o.post} for o in outputs.values()}
    hashes = {k: v for k, v in post_hashes.items() if k not in built_posts}
    hashes.update(unchanged_posts)
    hashes.update({m.post.slug: outputs_post_inputs for m in manifests
                   if (outputs_post_inputs := _page_inputs(outputs, m.post.slug)) is not None})
    new_state = {"version": STATE_VERSION, "outputs": dict(sorted({**kept, **entries}.items())),
                 "posts": dict(sorted(hashes.items()))}
    state_text = json.dumps(new_state, indent=1, sort_keys=True) + "\n"
    where = state_path(site)
    if not where.exists() or where.read_text() != state_text:
        where.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        results_mod.write_atomic(where, state_text)
    report.timings["write"] = time.monotonic() - t
    report.seconds = time.monotonic() - t0
    if not quiet:
        for p in report.written:
            print(f"  wrote {p}", file=sys.stderr)
        for p in report.removed:
            print(f"  removed {p}", file=sys.stderr)
        print(f"built {len(manifests)} post(s): {len(report.written)} written, "
              f"{len(report.skipped) + len(report.unchanged)} unchanged, in {report.seconds:.2f} s ("
              + ", ".join(f"{k} {v:.2f} s" for k, v in report.timings.items())
              + (f"; {len([o for o in stale if o.job])} graphs drawn by {workers} worker(s)"
                 if report.timings.get("render") else "") + ")", file=sys.stderr)
    return report
