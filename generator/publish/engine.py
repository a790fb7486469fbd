"""The build's engine: outputs keyed by the hash of their inputs, rendered in memory (graphs in
worker processes) and written all or nothing; what it wrote last time is kept in the cache, so a
rebuild renders only what changed. It knows outputs, not posts (post.py makes those)."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import __version__
from ..errors import UserError
from ..safe import is_inside, read_regular, write_all_beneath
from .templating import markdown_to_safe_html

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # generator/
PROJECT_DIR = PACKAGE_DIR.parent
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
    unshown_graphs: list = field(default_factory=list)  # declared graphs no post of the site shows


def hash_of(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


def code_hash(*names: str) -> str:
    return hash_of(__version__, *[(PACKAGE_DIR / n).read_bytes() for n in names])


_RELATIVE_IMPORT = re.compile(r"^[ \t]*from[ \t]+(\.+)([\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n]*)", re.M)


@functools.lru_cache(maxsize=None)
def code_of(module: str) -> tuple[str, ...]:
    """The files (relative to generator/) of `module` ('publish/post.py') and of every generator module it
    imports, at any depth and wherever the import stands: the code an output is made by, so that a
    change to any of it makes the output stale. (The package imports only relatively.)"""
    seen: set[str] = set()
    todo = [module]
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        package = Path(rel).parent  # of a module and of a package's __init__.py alike
        for dots, name, imported in _RELATIVE_IMPORT.findall((PACKAGE_DIR / rel).read_text()):
            base = package
            for _ in range(len(dots) - 1):
                base = base.parent
            target = base.joinpath(*name.split(".")) if name else base
            names = [n.split(" as ")[0].strip() for n in imported.strip("()").replace("\n", " ").split(",")]
            # the module itself, and each imported name that is a module of it ('from .guests import sources')
            candidates = [target / "__init__.py"]
            for n in filter(str.isidentifier, names):
                candidates += [(target / n).with_suffix(".py"), target / n / "__init__.py"]
            if name:
                candidates.append(target.with_suffix(".py"))
            todo.extend(str(c) for c in candidates if (PACKAGE_DIR / c).is_file())
    return tuple(sorted(seen))


# --- the whole build ---------------------------------------------------------------------------------
HUGO_CONFIGS = ("hugo.toml", "hugo.yaml", "hugo.json", "config.toml", "config.yaml", "config.json", "config")


def state_path(site: Path) -> Path:
    """Where the build remembers what it wrote into `site`: in the cache (MEMBALLOON_CACHE, default
    .cache), one file per site folder, so a blog's root and its git status stay clean."""
    cache = Path(os.environ.get("MEMBALLOON_CACHE", ".cache")).resolve()
    key = hashlib.sha256(str(site.resolve()).encode()).hexdigest()[:16]
    return cache / "build" / f"{site.resolve().name[:40]}-{key}.json"


def read_state(site: Path, clean: bool) -> tuple[dict, dict]:
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


def intact(path: Path, sha: str) -> bytes | None:
    """The file's bytes if it is a regular file with the recorded hash, else None."""
    if not path.is_file() or path.is_symlink():
        return None
    data = path.read_bytes()
    return data if hash_of(data) == sha else None


def render_all(stale: list[Output], workers: int) -> None:
    """Render the stale outputs. Graphs go to worker processes (a forkserver that loaded matplotlib
    once) while this process renders the pages; a preview's Markdown is converted by a worker too,
    so the large trees of a big post never live in this process. With one stale graph and nothing
    else to overlap, everything runs here."""
    from . import graphs

    graph_outputs = [o for o in stale if o.job is not None]
    others = [o for o in stale if o.job is None]
    if len(graph_outputs) <= 1 and workers <= 1 or not graph_outputs:
        for out in graph_outputs:
            out.data = graphs.render(out.job)
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
    ctx.set_forkserver_preload(["generator.publish._graph_worker", "generator.publish.plots",
                                 "generator.publish.graphs", "generator.publish.engine", "matplotlib.pyplot", "markdown"])

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
            futures = [(o, pool.submit(graphs.render, o.job))
                       for o in sorted(graph_outputs, key=lambda o: o.job[0] == "series")]
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


def page_inputs(outputs: dict[Path, Output], slug: str) -> str | None:
    """A built post's input hash: its page's (the page depends on everything the post is made of)."""
    return next((o.inputs for o in outputs.values() if o.post == slug and o.render is not None and
                 o.path.suffix == ".md"), None)


def stage_writes(writes: list[Output], site: Path) -> None:
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
