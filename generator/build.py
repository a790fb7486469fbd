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
import re
import subprocess
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
from .manifest import Manifest
from .plan import points, results_dir
from .units import mib_label

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent
STATE_FILE = ".memballoon-build.json"
STATE_VERSION = 1


@dataclass
class Output:
    """One file the build produces: where, what it depends on, and how to make its bytes."""

    path: Path
    inputs: str
    render: Callable[[], bytes]
    post: str
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
        path = p.record_path(folder)
        if not path.exists():
            continue
        raw = path.read_bytes()
        records.append(results_mod.parse_record(raw, path))
        digests.append(_sha(str(p.key), raw))
    return records, digests


# --- Jinja -------------------------------------------------------------------------------------------
def _jinja_env(content_dir: Path):
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(content_dir), str(templates_dir())]),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False,
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.do"])
    env.filters["mib"] = mib_label
    env.filters["num"] = lambda v, digits=0: "n/a" if v is None else f"{v:,.{digits}f}"
    env.filters["md_escape"] = lambda s: re.sub(r"([\[\]|*_`])", r"\\\1", str(s))
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
            raise UserError(f"two outputs to one path: {path} (from {outputs[path].post} and {manifest.path}); "
                            "give the posts different post.slug values")
        outputs[path] = Output(path, inputs, render, manifest.path)

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
    if not content_path.exists():
        raise UserError(f"{manifest.path}: post.content {content_path} does not exist")
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
        body = _render(env, content_path.name, str(content_path), **context) if data.has_data else ""
        text = _render(env, "post.md.j2", str(templates_dir() / "post.md.j2"),
                       front_matter=front_matter(manifest, _post_date(manifest, records)), body=body, **context)
        return text.encode()

    add(page, page_inputs, render_page)
    preview = site / "previews" / f"{slug}.html"

    def render_preview() -> bytes:
        import markdown

        text = outputs[page].data.decode()
        body_md = re.sub(r"\A\+\+\+\n.*?\n\+\+\+\n", "", text, flags=re.S)
        html = markdown.markdown(body_md, extensions=["tables", "fenced_code"], output_format="html")
        for fig in figures.values():
            png = outputs[img_dir / fig["file"]].data
            uri = "data:image/png;base64," + base64.b64encode(png).decode()
            html = html.replace(f'src="{fig["url"]}"', f'src="{uri}"')
        env = _jinja_env(content_path.parent)
        return _render(env, "preview.html.j2", str(templates_dir() / "preview.html.j2"), post=manifest.post,
                       html=html).encode()

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


# --- the whole build ---------------------------------------------------------------------------------
def _read_state(site: Path, clean: bool) -> dict:
    path = site / STATE_FILE
    if clean or not path.exists():
        return {}
    try:
        state = json.loads(path.read_text())
        return state.get("outputs", {}) if state.get("version") == STATE_VERSION else {}
    except (ValueError, OSError):
        return {}  # a broken state only costs a full build


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

    def rel(p: Path) -> str:
        return str(p.relative_to(site))

    # 1. decide and render, in memory; nothing is written if anything fails
    for out in outputs.values():
        known = state.get(rel(out.path))
        if known and known["inputs"] == out.inputs and out.path.exists():
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
            raise UserError(f"{out.post}: building {out.path} failed: {type(e).__name__}: {e}") from e
    # 2. write what changed
    for out in outputs.values():
        if out.path in report.skipped:
            continue
        if out.path.exists() and out.path.read_bytes() == out.data:
            report.unchanged.append(out.path)
            continue
        results_mod.write_atomic(out.path, out.data)
        report.written.append(out.path)
    # 3. remove what an earlier build wrote and this one no longer makes
    produced = {rel(p) for p in outputs}
    for old in sorted(set(state) - produced):
        target = site / old
        if target.exists():
            target.unlink()
            report.removed.append(target)
    new_state = {"version": STATE_VERSION,
                 "outputs": {rel(o.path): {"inputs": o.inputs, "sha256": _sha(o.data)} for o in outputs.values()}}
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

