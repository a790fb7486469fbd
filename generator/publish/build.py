"""Build: render each manifest's post from content/ through templates/ into the Hugo site.

For each post, its inputs are hashed (post.py); a post whose inputs and outputs are as last time is
skipped unparsed; the others' outputs are planned (post.py), the stale ones rendered in memory and
everything written all or nothing (engine.py); outputs these posts no longer make are removed. A
rebuild with unchanged inputs renders nothing and does not import matplotlib.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .. import results as results_mod
from ..errors import UserError
from ..manifest import Manifest
from ..safe import inside
from .engine import (HUGO_CONFIGS, STATE_VERSION, BuildReport, Output, hash_of, intact, page_inputs, read_state,
                     render_all, stage_writes, state_path)
from . import graphs
from .post import display_path, plan_post, post_inputs

__all__ = ["build_all", "state_path"]


def build_all(manifests: list[Manifest], *, results_override: str | None = None, site: Path = Path("site"),
              clean: bool = False, layout: str | None = None, quiet: bool = False,
              workers: int | None = None) -> BuildReport:
    """Render the posts of `manifests` into `site`. Previews (one HTML file per post, graphs inlined)
    go to site/previews/ when that folder exists (the project's site has it)."""
    t0 = time.monotonic()
    previews = (site / "previews").is_dir()
    report = BuildReport()
    if not any((site / name).exists() for name in HUGO_CONFIGS):
        raise UserError(f"{site}: not a Hugo site (no hugo.toml or config.toml); run from the project folder, "
                        "or pass --site with your blog's folder")
    workers = workers or os.cpu_count() or 1
    state, post_hashes = read_state(site, clean)
    outputs: dict[Path, Output] = {}
    unchanged_posts: dict[str, str] = {}
    for m in manifests:
        t = time.monotonic()
        plan = post_inputs(m, results_override=results_override, layout=layout)
        report.timings["inputs"] = report.timings.get("inputs", 0.0) + time.monotonic() - t
        own = {k: v for k, v in state.items() if v["post"] == plan.slug}
        # a post whose inputs are all as last time and whose every output is intact: nothing to parse
        if post_hashes.get(plan.slug) == plan.inputs and own and \
                all(intact(site / k, v["sha256"]) is not None for k, v in own.items()):
            unchanged_posts[plan.slug] = plan.inputs
            report.skipped.extend(site / k for k in own)
            continue
        t = time.monotonic()
        if not plan_post(plan, site=site, outputs=outputs, previews=previews) and not quiet:
            print(f"warning: {m.path}: no measured point in {display_path(plan.folder)} ({len(plan.raw)} record(s)); "
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
            current = intact(out.path, known["sha256"])
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
    stage_writes(writes, site)
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
    entries = {rel(o.path): {"inputs": o.inputs, "sha256": hash_of(o.data), "post": o.post,
                             **({"graph": o.job[0]} if o.job else {})} for o in outputs.values()}
    hashes = {k: v for k, v in post_hashes.items() if k not in built_posts}
    hashes.update(unchanged_posts)
    hashes.update({m.post.slug: outputs_post_inputs for m in manifests
                   if (outputs_post_inputs := page_inputs(outputs, m.post.slug)) is not None})
    new_state = {"version": STATE_VERSION, "outputs": dict(sorted({**kept, **entries}.items())),
                 "posts": dict(sorted(hashes.items()))}
    state_text = json.dumps(new_state, indent=1, sort_keys=True) + "\n"
    # a graph declared in publish/graphs.py that no post of this site shows is named, not silently never drawn
    shown = {e.get("graph") for e in new_state["outputs"].values()}
    report.unshown_graphs = [g.name for g in graphs.GRAPHS if g.name not in shown]
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
        if previews and report.unshown_graphs:  # the project's own site: every graph is meant to be shown
            print(f"note: no post shows the graph(s) {', '.join(report.unshown_graphs)} (publish/graphs.py); show "
                  "one with figures[...] in a post's content, or remove its declaration", file=sys.stderr)
        print(f"built {len(manifests)} post(s): {len(report.written)} written, "
              f"{len(report.skipped) + len(report.unchanged)} unchanged, in {report.seconds:.2f} s ("
              + ", ".join(f"{k} {v:.2f} s" for k, v in report.timings.items())
              + (f"; {len([o for o in stale if o.job])} graphs drawn by {workers} worker(s)"
                 if report.timings.get("render") else "") + ")", file=sys.stderr)
    return report
