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
import subprocess
import tempfile
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import __version__
from . import results as results_mod
from .analysis import Data, build_series
from .errors import UserError
from .manifest import Manifest, project_root
from .safe import inside, is_inside, read_regular
from .plan import points, results_dir
from .units import mib_label

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent
STATE_FILE = ".memballoon-build.json"
STATE_VERSION = 2  # 2: each output names its post, so a build removes only outputs of the posts it built
MAX_STATE_BYTES = 8 * 1024 * 1024


@dataclass
class Output:
    """One file the build produces: where, what it depends on, and how to make its bytes."""

    path: Path
    inputs: str
    render: Callable[[], bytes]
    post: str      # the post's slug: a build removes only outputs of the posts it built
    source: str    # the manifest it comes from, for messages
    data: bytes | None = None


@dataclass
class BuildReport:
    written: list = field(default_factory=list)
    unchanged: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    removed: list = field(default_factory=list)
    seconds: float = 0.0


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


def results_commit(folder: Path) -> str | None:
    """The last git commit that touched the results folder, '+dirty' if it has uncommitted changes."""
    try:
        out = subprocess.run(["git", "-C", str(folder), "log", "-1", "--format=%H", "--", "."],
                             capture_output=True, text=True, timeout=20)
        if out.returncode != 0 or not out.stdout.strip():
            return None
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=20).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def _load_records(manifest: Manifest, folder: Path) -> tuple[list[dict], list[str]]:
    """Records of the planned points, and the digest of each file (the build's inputs)."""
    records, digests = [], []
    for p in points(manifest):
        found = results_mod.read_point(p, folder)
        if found is None:
            continue
        record, raw = found
        records.append(record)
        digests.append(_sha(str(p.key), raw))
    return records, digests


# --- Jinja -------------------------------------------------------------------------------------------
# Values from manifests, records and guests are text, never Markdown or HTML: every {{ value }} is
# escaped for Markdown (the characters that make links, code spans, table cells and escapes) and for
# HTML (by Jinja's autoescape). Templates and macros are trusted; what they output is not escaped again.
_MD_SPECIAL = re.compile(r"([\\`\[\]|])")


def md_text(value) -> "Markup":
    """A value as literal Markdown text: Markdown's specials backslash-escaped, HTML's as entities."""
    from markupsafe import Markup

    if isinstance(value, Markup):
        return value
    text = " ".join(str(value).splitlines())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    return Markup(_MD_SPECIAL.sub(r"\\\1", text))


def md_code(value) -> "Markup":
    """A value as a Markdown code span, fenced by more backticks than it contains (no escaping applies
    inside a code span, so none is done)."""
    from markupsafe import Markup

    text = " ".join(str(value).splitlines())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return Markup(f"{fence}{pad}{text}{pad}{fence}")


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


def _render(env, name: str, fallback: str, **context) -> str:
    import jinja2

    try:
        return env.get_template(name).render(**context)
    except jinja2.TemplateNotFound as e:
        raise UserError(f"{fallback}: template {e.name!r} not found in {templates_dir()}") from None
    except Exception as e:  # noqa: BLE001 - every template failure is reported with file and line
        raise _template_error(e, fallback) from None


# --- front matter ------------------------------------------------------------------------------------
def front_matter(manifest: Manifest, date: str) -> str:
    """TOML between +++ lines, the keys shaped like the 2012 post's, written by a TOML library."""
    import tomli_w

    post = manifest.post
    fm = {
        "Categories": list(post.categories),
        "Description": post.description,
        "Tags": list(post.tags),
        "date": date,
        "menu": post.menu,
        "title": post.title,
        "aliases": list(post.aliases),
    }
    return "+++\n" + tomli_w.dumps(fm) + "+++\n"


def _post_date(manifest: Manifest, records: list[dict]) -> str:
    if manifest.post.date:
        return manifest.post.date
    stamps = sorted(r["started_at"] for r in records if r.get("started_at"))
    if stamps:
        return stamps[-1]
    return _dt.date.today().isoformat()


# --- one post ----------------------------------------------------------------------------------------
def plan_post(manifest: Manifest, *, results_override: str | None, site: Path, layout: str | None,
              outputs: dict[Path, Output]) -> None:
    """Add this post's outputs (not yet rendered) to `outputs`; two outputs to one path is an error."""
    folder = results_dir(manifest, results_override)
    records, digests = _load_records(manifest, folder)
    labels = {g.name: g.label for g in manifest.guests}
    series = build_series(records, labels, len(manifest.hosts))
    data = Data(records, series, planned=len(points(manifest)))
    layout = layout or manifest.post.layout
    slug = manifest.post.slug
    if layout == "bundle":
        page = site / "content" / "posts" / slug / "index.md"
        img_dir, img_url = page.parent, ""
    else:
        page = site / "content" / "posts" / f"{slug}.md"
        img_dir, img_url = site / "static" / "img", "/img/"
    by_key = dict(zip([_record_key(r) for r in records], digests))
    plot_code = _code_hash("plots.py", "analysis.py")

    def add(path: Path, inputs: str, render: Callable[[], bytes]) -> None:
        if path in outputs:
            raise UserError(f"two outputs to one path: {path} (from {outputs[path].source} and {manifest.path}); "
                            "give the posts different post.slug values")
        outputs[path] = Output(path, inputs, render, slug, manifest.path)

    figures: dict[str, dict] = {}
    if data.has_data:
        from . import plots  # matplotlib itself is imported only when a graph renders

        for s in series:
            if not s.measured and not s.failed:
                continue
            deps = sorted(by_key[_record_key(r)] for p in s.points for r in p.records)
            name = f"{s.file_stem}.png"
            figures[s.key] = {"file": name, "url": img_url + name, "alt": s.alt_text(), "title": s.title}
            add(img_dir / name, _sha(plot_code, "series", s.title, *deps), lambda s=s: plots.series_png(s))
        everything = sorted(digests)
        if len(series) > 1:
            all_name = f"{slug}-all-guests.png"
            figures["all"] = {"file": all_name, "url": img_url + all_name, "title": "Every series",
                              "alt": _all_alt(series)}
            add(img_dir / all_name, _sha(plot_code, "all", *everything), lambda: plots.all_series_png(series))
        fits = [s.fit() for s in series]
        lost_name = f"{slug}-memory-lost.png"
        figures["lost"] = {"file": lost_name, "url": img_url + lost_name, "title": "Memory lost",
                           "alt": _lost_alt(series, fits)}
        add(img_dir / lost_name, _sha(plot_code, "lost", *everything), lambda: plots.lost_png(series, fits))

    content_path = Path(manifest.post.content)
    if not content_path.is_file():
        raise UserError(f"{manifest.path}: post.content {content_path} does not exist")
    inside(content_path, project_root(Path(manifest.path)), "post.content")
    commit = results_commit(folder)
    template_files = sorted(templates_dir().glob("*"))
    page_inputs = _sha(__version__, manifest.sha256, layout, content_path.read_bytes(), str(commit),
                       _code_hash("build.py", "analysis.py"),
                       *[f.name.encode() + f.read_bytes() for f in template_files], *sorted(digests))

    def render_page() -> bytes:
        env = _jinja_env(content_path.parent)
        context = {"post": manifest.post, "manifest": manifest, "data": data, "figures": figures,
                   "results_commit": commit, "results_dir": _display_path(folder), "layout": layout,
                   "tool_version": __version__}
        from markupsafe import Markup

        body = _render(env, content_path.name, str(content_path), **context) if data.has_data else ""
        text = _render(env, "post.md.j2", str(templates_dir() / "post.md.j2"),
                       front_matter=Markup(front_matter(manifest, _post_date(manifest, records))), body=Markup(body),
                       **context)
        return text.encode()

    add(page, page_inputs, render_page)
    preview = site / "previews" / f"{slug}.html"

    def render_preview() -> bytes:
        from markupsafe import Markup

        text = outputs[page].data.decode()
        body_md = re.sub(r"\A\+\+\+\n.*?\n\+\+\+\n", "", text, flags=re.S)
        html = markdown_to_safe_html(body_md)
        for fig in figures.values():
            png = outputs[img_dir / fig["file"]].data
            uri = "data:image/png;base64," + base64.b64encode(png).decode()
            html = html.replace(f'src="{fig["url"]}"', f'src="{uri}"')
        env = _jinja_env(content_path.parent)
        return _render(env, "preview.html.j2", str(templates_dir() / "preview.html.j2"), post=manifest.post,
                       html=Markup(html)).encode()

    add(preview, _sha("preview", page_inputs, *[outputs[img_dir / f["file"]].inputs for f in figures.values()]),
        render_preview)


def _record_key(r: dict) -> str:
    return f"{r['host']}/{r['guest']}/{r['memory_mib']}/{r['current_memory_mib']}/{r.get('repeat', 1)}"


def _display_path(folder: Path) -> str:
    try:
        return str(folder.resolve().relative_to(PROJECT_DIR))
    except ValueError:
        return folder.name


def _all_alt(series) -> str:
    parts = ["Graph: memory seen after ballooning against memory, every series together."]
    for s in series:
        seen = [f"{p.median:g} MiB at {mib_label(p.memory_mib)}" for p in (s.measured[:1] + s.measured[1:][-1:])]
        failed = [f"{p.failure_label} at {mib_label(p.memory_mib)}" for p in s.failed]
        parts.append(f"{s.title}: {', '.join(seen + failed)}.")
    return " ".join(parts)


def _lost_alt(series, fits) -> str:
    parts = ["Graph: currentMemory minus what the guest sees, against memory in GiB, with a fitted line."]
    for s, fit in zip(series, fits):
        if fit:
            parts.append(f"{s.title}: about {fit.slope:.1f} MiB lost per GiB of memory.")
    return " ".join(parts)


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
def _read_state(site: Path, clean: bool) -> dict:
    """The previous build's outputs: {site-relative path: {"inputs", "sha256", "post"}}; only entries
    naming a plain relative path inside the site are kept (the file may come from someone else)."""
    path = site / STATE_FILE
    if clean or not path.exists():
        return {}
    try:
        state = json.loads(read_regular(path, MAX_STATE_BYTES, "build state").decode("utf-8"))
    except (ValueError, UserError):
        return {}  # a broken state only costs a full build
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or not isinstance(state.get("outputs"), dict):
        return {}
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
    return good


def _stage_writes(writes: list[Output]) -> None:
    """Write every changed output to a temporary file beside it, then move them all in.

    If any write fails (disk full), the temporary files are removed and the site stays as it was;
    renaming cannot fail for lack of space."""
    staged: list[tuple[str, Path]] = []
    try:
        for out in writes:
            try:
                out.path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=out.path.parent, prefix=f".{out.path.name}.", suffix=".tmp")
                staged.append((tmp, out.path))
                with os.fdopen(fd, "wb") as f:
                    f.write(out.data)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o644)
            except OSError as e:
                raise UserError(f"{out.path}: cannot write ({e.strerror}); nothing was changed in the site") from None
    except BaseException:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise
    for tmp, target in staged:
        os.replace(tmp, target)


def build_all(manifests: list[Manifest], *, results_override: str | None = None, site: Path = Path("site"),
              clean: bool = False, layout: str | None = None, quiet: bool = False) -> BuildReport:
    t0 = time.monotonic()
    report = BuildReport()
    if not (site / "hugo.toml").exists():
        raise UserError(f"{site}: not the project's Hugo site (no hugo.toml); run from the project folder "
                        "or pass --site")
    state = _read_state(site, clean)
    outputs: dict[Path, Output] = {}
    for m in manifests:
        plan_post(m, results_override=results_override, site=site, layout=layout, outputs=outputs)
    built_posts = {m.post.slug for m in manifests}

    def rel(p: Path) -> str:
        return str(p.relative_to(site))

    # 1. decide and render, in memory; nothing is written if anything fails
    for out in outputs.values():
        known = state.get(rel(out.path))
        if known and known["inputs"] == out.inputs and out.path.is_file() and not out.path.is_symlink():
            current = out.path.read_bytes()
            if _sha(current) == known["sha256"]:
                out.data = current
                report.skipped.append(out.path)
                continue
        try:
            out.data = out.render()
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - say which output failed
            raise UserError(f"{out.source}: building {out.path} failed: {type(e).__name__}: {e}") from e
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
    _stage_writes(writes)
    report.written.extend(out.path for out in writes)
    # 3. remove what an earlier build of these posts wrote and this one no longer makes; outputs of
    #    posts not built this time stay, and stay in the state
    produced = {rel(p) for p in outputs}
    kept = {k: v for k, v in state.items() if v["post"] not in built_posts and k not in produced}
    for old in sorted(set(state) - produced - set(kept)):
        target = site / old
        if target.is_file() or target.is_symlink():
            target.unlink()
            report.removed.append(target)
    entries = {rel(o.path): {"inputs": o.inputs, "sha256": _sha(o.data), "post": o.post} for o in outputs.values()}
    new_state = {"version": STATE_VERSION, "outputs": dict(sorted({**kept, **entries}.items()))}
    state_text = json.dumps(new_state, indent=1, sort_keys=True) + "\n"
    state_path = site / STATE_FILE
    if not state_path.exists() or state_path.read_text() != state_text:
        results_mod.write_atomic(state_path, state_text)
    report.seconds = time.monotonic() - t0
    if not quiet:
        for p in report.written:
            print(f"  wrote {p}", file=sys.stderr)
        for p in report.removed:
            print(f"  removed {p}", file=sys.stderr)
        print(f"built {len(manifests)} post(s): {len(report.written)} written, "
              f"{len(report.skipped) + len(report.unchanged)} unchanged, in {report.seconds:.2f} s", file=sys.stderr)
    return report
