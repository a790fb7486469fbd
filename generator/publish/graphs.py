"""The graphs a post can show, declared once each: a name, which figures a post's data gives (`figures`),
and the plots.py function that draws one (`draw`). A post's content shows a figure by its key
(`figures.lost`, `figures[s.key]`); only the figures a page shows are drawn, and a graph that no post
shows at all is named by the build (a graph added without a page that uses it).

Adding a graph: a plots.py function that draws it, a function here that lists its figures, and its
line in GRAPHS; then a post's content that shows it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..units import mib_label
from . import plots


@dataclass(frozen=True)
class Figure:
    """One image of a post: how content refers to it (`key`), its file, what it shows (title, alt text),
    what its draw function is given (`args`, picklable: drawn in a worker process), and what it is made
    from (`inputs`: a change to any of them draws it again)."""

    key: str
    file: str
    title: str
    alt: str
    args: tuple
    inputs: tuple


@dataclass(frozen=True)
class PostData:
    """What a graph's figures are made from: the post's data and series, its slug, and the records'
    digests (`deps` of some records, `everything` of the post's)."""

    data: object
    series: list
    slug: str
    deps: Callable[[list], list]
    everything: list


@dataclass(frozen=True)
class Graph:
    name: str                                   # the draw job's name (what a worker process is sent)
    figures: Callable[[PostData], list[Figure]]  # the post's data -> its figures of this graph
    draw: Callable[..., bytes]                  # one figure's args -> PNG bytes


def _records(series) -> list:
    return [r for s in series for p in s.points for r in p.records]


def _series_figures(post: PostData) -> list[Figure]:
    """One graph per series (hypervisor, guest, currentMemory, factors), as 2012 had."""
    return [Figure(s.key, f"{s.file_stem}.png", s.title, s.alt_text(), (s.lean(),),
                   ("series", s.title, *post.deps(_records([s]))))
            for s in post.series if s.measured or s.failed]


def _compare_figures(post: PostData) -> list[Figure]:
    """One guest on several hypervisors, side by side."""
    return [Figure(c["key"], f"{c['stem']}.png", c["title"], all_alt(c["series"]),
                   ([x.lean() for x in c["series"]], c["title"]), ("compare", c["title"], *post.deps(_records(c["series"]))))
            for c in post.data.comparisons]


def _over_memory(post: PostData) -> list:
    """The series that are curves over memory: not those with memory plugged after boot (one point each,
    told in a table of their own)."""
    return [s for s in post.series if not s.factors.get("plugged_mib")]


def _all_figures(post: PostData) -> list[Figure]:
    """Every series of the post in one graph (panels where there are many)."""
    series = _over_memory(post)
    if len(series) <= 1:
        return []
    return [Figure("all", f"{post.slug}-all-guests.png", "Every series", all_alt(series),
                   ([s.lean() for s in series],), ("all", *post.everything))]


def _lost_figures(post: PostData) -> list[Figure]:
    """currentMemory minus what the guest sees, with each guest's loss by the kernel's rules."""
    series = _over_memory(post)
    fits = [s.fit() for s in series]
    return [Figure("lost", f"{post.slug}-memory-lost.png", "Memory lost", lost_alt(series, fits),
                   ([s.lean() for s in series], fits), ("lost", *post.everything))]


GRAPHS: list[Graph] = [
    Graph("series", _series_figures, plots.series_png),
    Graph("compare", _compare_figures, plots.all_series_png),
    Graph("all", _all_figures, plots.all_series_png),
    Graph("lost", _lost_figures, plots.lost_png),
]


def render(job: tuple) -> bytes:
    """Draw one figure, (graph name, args): what worker processes are sent. Only registered graphs."""
    name, args = job
    graph = next((g for g in GRAPHS if g.name == name), None)
    if graph is None:
        raise ValueError(f"no graph called {name!r}")
    return graph.draw(*args)


def figures_of(post: PostData) -> list[tuple[Graph, Figure]]:
    """Every figure the post's data gives, graph by graph, in GRAPHS' order."""
    return [(g, f) for g in GRAPHS for f in g.figures(post)]


# --- alt texts ---------------------------------------------------------------------------------------
def all_alt(series) -> str:
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


def lost_alt(series, fits) -> str:
    """Under ~300 characters: the slopes, where the loss stops, where guests die."""
    slopes = sorted({round(f.slope, 1) for f in fits if f})
    flat = [s for s, f in zip(series, fits) if not f and s.measured]
    text = "MiB lost against memory (log scale)"
    if slopes:
        text += f": {slopes[0]:g}" + (f" to {slopes[-1]:g}" if len(slopes) > 1 else "") + \
            f" MiB per GiB for {sum(1 for f in fits if f)} guest(s)"
    if flat:
        worst = max(flat, key=lambda s: s.current_memory_mib - s.measured[-1].median)
        text += f"; {len(flat)} without a rule drawn, up to {worst.current_memory_mib - worst.measured[-1].median:g} MiB"
    died = sorted({p.memory_mib for s in series for p in s.failed if p.died})
    if died:
        text += f"; guests died from {mib_label(died[0])} (crosses at the top)"
    return _cap(text + ".")


def _cap(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"
