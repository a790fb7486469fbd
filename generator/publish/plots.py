"""Graphs like the 2012 post's, drawn with matplotlib (headless) into byte-reproducible PNGs."""
from __future__ import annotations

import io

from .analysis import FAILURE_LABELS, Fit, Series
from ..units import mib_label

MAX_LEGEND = 16  # series named in a combined graph's legend
_COLORS = ["#1f5fa6", "#c0392b", "#2e8b57", "#8e44ad", "#d35400", "#2c3e50", "#16a085", "#7f8c8d"]
_FAIL_MARKERS = {"oom": "X", "panic": "X", "refused": "s", "timeout": "v", "error": "D"}


def render(job: tuple) -> bytes:
    """Run one graph job, (function name, arguments): what worker processes are sent."""
    name, args = job
    if name not in ("series_png", "all_series_png", "lost_png"):
        raise ValueError(f"no graph called {name!r}")
    return globals()[name](*args)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "font.family": "DejaVu Sans", "font.size": 10, "axes.grid": True, "grid.alpha": 0.3,
        "figure.dpi": 100, "savefig.dpi": 100, "axes.spines.top": False, "axes.spines.right": False,
        "path.simplify": False,
        # labels, titles and legends hold guest kernels, labels and host names: text, never mathtext
        # (a '$' would otherwise start a formula, and a hostile one can crash the parser)
        "text.parse_math": False,
    })
    return plt


def _png(fig) -> bytes:
    """PNG bytes with no timestamp or software version inside: equal data, equal bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None}, bbox_inches=None)
    return buf.getvalue()


def _gib_axis(ax, memory_values: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(memory_values)
    ax.set_xticklabels([mib_label(m).replace(" GiB", "G").replace(" MiB", "M") for m in memory_values])
    ax.minorticks_off()
    lo, hi = min(memory_values), max(memory_values)
    ax.set_xlim(lo / 1.35, hi * 1.35)
    ax.set_xlabel("memory (libvirt <memory>, log scale)")


def _draw_series(ax, s: Series, color: str, label: str | None, bottom: float, slot: int = 0) -> None:
    """One series; `slot` stacks the failure labels of several series at the same memory."""
    xs = [p.memory_mib for p in s.measured]
    ys = [p.median for p in s.measured]
    ax.plot(xs, ys, "-o", color=color, label=label, linewidth=1.8, markersize=5, zorder=3)
    # repeats: every value as a faint dot and the range as an error bar
    spread_label = f"range of repeats ({label})" if label and slot else "range of repeats"
    for p in s.measured:
        if len(p.seen) > 1 and p.spread[1] > p.spread[0]:  # identical repeats: nothing to draw
            lo, hi = p.spread
            ax.errorbar([p.memory_mib], [p.median], yerr=[[p.median - lo], [hi - p.median]], color=color,
                        capsize=4, linewidth=1, zorder=2, label=spread_label)
            spread_label = None
            ax.scatter([p.memory_mib] * len(p.seen), p.seen, color=color, alpha=0.35, s=12, zorder=2)
    for p in s.failed:
        marker = _FAIL_MARKERS.get(p.status, "D")
        x = p.memory_mib * (1.06 ** slot)
        ax.scatter([x], [bottom], marker=marker, color=color, s=60, zorder=4, clip_on=False)
        ax.annotate(FAILURE_LABELS.get(p.status, p.status), (x, bottom), textcoords="offset points",
                    xytext=(0, 8 + 12 * slot), ha="center", fontsize=9, color=color, fontweight="bold")


def _y_range(series: list[Series]) -> tuple[float, float]:
    values = [v for s in series for p in s.measured for v in p.seen] + [s.current_memory_mib for s in series]
    lo, hi = min(values), max(values)
    pad = max(40.0, (hi - lo) * 0.12)
    return lo - pad * 1.6, hi + pad


def series_png(s: Series) -> bytes:
    """One (hypervisor, guest, currentMemory): what the guest sees, the dashed line it should see."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    try:
        memory_values = [p.memory_mib for p in s.points]
        y0, y1 = _y_range([s])
        ax.set_ylim(y0, y1)
        ax.axhline(s.current_memory_mib, linestyle="--", color="#555555", linewidth=1.2,
                   label=f"currentMemory ({s.current_memory_mib} MiB): what the guest should see")
        _draw_series(ax, s, _COLORS[0], "free -m total inside the guest", y0 + (y1 - y0) * 0.04)
        _gib_axis(ax, memory_values)
        ax.set_ylabel("memory seen by the guest (MiB)")
        ax.set_title(s.title)
        ax.legend(loc="lower left", fontsize=8, frameon=False)
        fig.tight_layout()
        return _png(fig)
    finally:
        plt.close(fig)


def all_series_png(series: list[Series], title: str = "") -> bytes:
    """Every (host, guest, currentMemory) on one graph: several guests, or several balloon targets;
    with a title, a chosen few (one guest on several hypervisors)."""
    plt = _pyplot()
    legend = len(series) <= MAX_LEGEND  # beyond that a legend is a wall of text: the per-series graphs name them
    fig, ax = plt.subplots(figsize=(7.2, 4.2 + (0.22 * len(series) if legend else 0)))
    try:
        memory_values = sorted({p.memory_mib for s in series for p in s.points})
        y0, y1 = _y_range(series)
        ax.set_ylim(y0, y1)
        currents = {s.current_memory_mib for s in series}
        if len(currents) == 1:
            ax.axhline(currents.pop(), linestyle="--", color="#555555", linewidth=1.0, label="currentMemory")
        for i, s in enumerate(series):
            color = _COLORS[i % len(_COLORS)]
            if len({x.current_memory_mib for x in series}) > 1:  # each target in its series' colour
                ax.axhline(s.current_memory_mib, linestyle="--", color=color, linewidth=1.0, alpha=0.7)
            _draw_series(ax, s, color, f"{s.host}: {s.title}" if legend else None, y0 + (y1 - y0) * 0.04,
                         slot=i if legend else 0)
        _gib_axis(ax, memory_values)
        ax.set_ylabel("memory seen by the guest (MiB)")
        ax.set_title(title or ("Every series: memory seen after ballooning" if legend else
                      f"All {len(series)} series: memory seen after ballooning")
                     + ("" if len({s.current_memory_mib for s in series}) == 1 else
                        " (dashed: each series' currentMemory)"), fontsize=10)
        if legend:
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, frameon=False, ncol=1)
        fig.tight_layout()
        return _png(fig)
    finally:
        plt.close(fig)


def lost_png(series: list[Series], fits: list[Fit | None]) -> bytes:
    """currentMemory minus what the guest sees, against memory (linear), with each fitted line."""
    plt = _pyplot()
    below = 3 < len(series) <= MAX_LEGEND
    lines = sum(2 if f else 1 for f in fits)
    fig, ax = plt.subplots(figsize=(7.2, 4.2 + (0.22 * lines if below else 0)))
    try:
        for i, (s, fit) in enumerate(zip(series, fits)):
            color = _COLORS[i % len(_COLORS)]
            xs = [p.memory_mib / 1024 for p in s.measured for _ in p.seen]
            ys = [s.current_memory_mib - v for p in s.measured for v in p.seen]
            ax.scatter(xs, ys, color=color, s=22, zorder=3, label=f"{s.host}: {s.title}")
            if fit:
                x0, x1 = min(xs), max(xs)
                ax.plot([x0, x1], [fit(x0), fit(x1)], color=color, linewidth=1.2, linestyle="-", zorder=2,
                        label=f"fit: {fit.slope:.1f} MiB lost per GiB of memory (+{fit.intercept:.0f} MiB)")
            elif s.measured:  # no straight line describes it (Xen PV): the medians, joined
                ax.plot([p.memory_mib / 1024 for p in s.measured], [s.current_memory_mib - p.median for p in s.measured],
                        color=color, linewidth=1.2, linestyle="--", zorder=2)
            died = [p for p in s.failed if p.died]
            if died:  # the guest lost all of currentMemory: drawn there, as the cross it is elsewhere
                ax.scatter([p.memory_mib / 1024 for p in died], [s.current_memory_mib] * len(died), color=color,
                           marker=_FAIL_MARKERS["oom"], s=60, zorder=4)
        dead_at = sorted({s.current_memory_mib for s in series for p in s.failed if p.died})
        for level in dead_at:
            ax.axhline(level, linestyle=":", color="#555555", linewidth=1.0, zorder=1,
                       label=None if level != dead_at[0] else
                       f"all of currentMemory ({level} MiB) lost: the guest died (x)" if len(dead_at) == 1 else
                       "all of its currentMemory lost: the guest died (x, dotted)")
        ax.set_xlabel("memory (GiB)")
        ax.set_ylabel("currentMemory - what the guest sees (MiB)")
        ax.set_title("Memory lost to a large <memory>" + ("" if len(series) <= MAX_LEGEND else
                                                           f" ({len(series)} series)"))
        ax.set_ylim(bottom=0)
        ax.set_xlim(left=0)
        if len(series) <= MAX_LEGEND:
            if len(series) > 3:  # below the axes, where it hides no point
                ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, frameon=False, ncol=1)
            else:
                ax.legend(loc="upper left", fontsize=8, frameon=False)
        fig.tight_layout()
        return _png(fig)
    finally:
        plt.close(fig)
