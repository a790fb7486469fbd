"""Graphs like the 2012 post's, drawn with matplotlib (headless) into byte-reproducible PNGs."""
from __future__ import annotations

import io

from .series import FAILURE_LABELS, LawCurve, Series
from ..units import mib_label

MAX_LEGEND = 16  # series named in a combined graph's legend
MAX_PER_AXES = 6  # more series than this on one axes hide each other: split into panels
_COLORS = ["#1f5fa6", "#c0392b", "#2e8b57", "#8e44ad", "#d35400", "#2c3e50", "#16a085", "#7f8c8d"]
# One colour and marker per guest kernel series, in every graph of every post (a reader follows a kernel
# from graph to graph); kernels not listed get one from their name, the same every time.
_KERNEL_STYLE = {"5.10": ("#c0392b", "s"), "6.1": ("#1f5fa6", "o"), "6.12": ("#2e8b57", "^"),
                 "system": ("#8e44ad", "D")}
# Drawn for the width it is shown at: 5 inches at 200 dpi, a 1000-pixel image (sharp on 2x screens). All
# text is 11 points (about 31 pixels of the image): at least 11 CSS pixels where a 390-pixel phone shows
# the image 366 pixels wide (LEGIBLE_PT). Legends stand below the axes, where they hide no data.
FIG_W, FIG_H, DPI = 5.0, 3.6, 200
# per domain type: (line style, marker), so that hypervisors are told apart in black and white too
_HV_STYLE = {"qemu": ("-", "o"), "kvm": ("--", "s"), "xen": ("-.", "^")}
LEGIBLE_PT = 11
LEGEND_ROW_IN = 0.19  # figure height a legend row takes below the axes, inches
_FAIL_MARKERS = {"oom": "X", "panic": "X", "refused": "s", "timeout": "v", "error": "D"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "font.family": "DejaVu Sans", "font.size": 11, "axes.grid": True, "grid.alpha": 0.3,
        "axes.titlesize": 11, "legend.fontsize": 11, "xtick.labelsize": 11, "ytick.labelsize": 11,
        "figure.dpi": DPI, "savefig.dpi": DPI, "axes.spines.top": False, "axes.spines.right": False,
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


def style(s: Series, i: int = 0) -> tuple[str, str]:
    """(colour, marker) of a series: the colour its guest kernel's, the marker its hypervisor's (where
    the domain type has one), the same in every graph: QEMU and Xen series of one kernel differ."""
    import re
    import zlib

    marker = _HV_STYLE.get(s.domain_type, (None, None))[1]
    if s.is_system:
        color, own = _KERNEL_STYLE["system"]
        return color, marker or own
    m = re.match(r"(\d+\.\d+)", (s.kernels or [""])[0])
    key = m.group(1) if m else ""
    if key in _KERNEL_STYLE:
        color, own = _KERNEL_STYLE[key]
        return color, marker or own
    n = zlib.crc32(key.encode()) if key else i
    return _COLORS[n % len(_COLORS)], marker or "ov^sD<>"[n % 7]


def linestyle(s: Series) -> str:
    """A series' line: its hypervisor's (QEMU solid, KVM dashed, Xen dash-dotted); autodeflate dotted."""
    if s.factors.get("autodeflate"):
        return ":"
    return _HV_STYLE.get(s.domain_type, ("-", None))[0]


def _gib_axis(ax, memory_values: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(memory_values)
    ax.set_xticklabels([mib_label(m).replace(" GiB", "G").replace(" MiB", "M") for m in memory_values])
    ax.minorticks_off()
    lo, hi = min(memory_values), max(memory_values)
    ax.set_xlim(lo / 1.35, hi * 1.35)
    ax.set_xlabel("memory (log scale)")


def _draw_series(ax, s: Series, look: tuple[str, str, str], label: str | None, bottom: float, slot: int = 0) -> None:
    """One series drawn with `look` (colour, marker, line style); `slot` stacks the failure labels of
    several series at the same memory."""
    color, marker, line = look
    xs = [p.memory_mib for p in s.measured]
    ys = [p.median for p in s.measured]
    ax.plot(xs, ys, linestyle=line, marker=marker, color=color, label=label, linewidth=1.8, markersize=5, zorder=3)
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
                    xytext=(0, 8 + 14 * slot), ha="center", fontsize=LEGIBLE_PT, color=color, fontweight="bold",
                    annotation_clip=False)


def _wrapped(title: str, width: int = 46) -> str:
    """A title in lines that fit the figure's width at 11 pt: never clipped at the image's edge."""
    import textwrap

    return "\n".join(textwrap.wrap(title, width)) or title


LEGEND_CHARS = 46  # a legend line at 11 pt that fits the image's width from its left margin


def _legend_below(ax, shown: bool = True) -> float:
    """The legend under the axes (tight_layout makes room for it), from near the image's left edge and
    its labels wrapped to fit: it never covers a point and is never cut at the image's edge. Returns the
    height it needs below the axes (inches), for the figure's size."""
    handles, labels = ax.get_legend_handles_labels()
    if not shown or not labels:
        return 0.0
    wrapped = [_wrapped(label, LEGEND_CHARS) for label in labels]
    from matplotlib.transforms import offset_copy

    # from the axes' bottom left corner, below the tick labels and the axis label (about 46 points)
    below = offset_copy(ax.transAxes, fig=ax.figure, x=0, y=-46, units="points")
    ax.legend(handles, wrapped, loc="upper left", bbox_to_anchor=(-0.12, 0), bbox_transform=below, frameon=False,
              ncol=1)
    return LEGEND_ROW_IN * sum(len(w.splitlines()) for w in wrapped) + 0.25


def _y_range(series: list[Series]) -> tuple[float, float]:
    """From 0 to just above currentMemory: a 65 MiB drop looks as small as it is, and graphs of one
    currentMemory share their scale."""
    values = [v for s in series for p in s.measured for v in p.seen] + [s.current_memory_mib for s in series]
    return 0.0, max(values) * 1.12


def series_png(s: Series) -> bytes:
    """One (hypervisor, guest, currentMemory): what the guest sees, the dashed line it should see."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(FIG_W, FIG_H))
    try:
        memory_values = [p.memory_mib for p in s.points]
        y0, y1 = _y_range([s])
        ax.set_ylim(y0, y1)
        ax.axhline(s.current_memory_mib, linestyle="--", color="#555555", linewidth=1.2,
                   label=f"currentMemory ({s.current_memory_mib} MiB)")
        color, marker = style(s)
        _draw_series(ax, s, (color, marker, linestyle(s)), "what the guest sees (free -m)", y0 + (y1 - y0) * 0.04)
        _gib_axis(ax, memory_values)
        ax.set_ylabel("MiB seen by the guest")
        ax.set_title(_wrapped(s.title))
        fig.set_size_inches(FIG_W, FIG_H + _legend_below(ax))
        fig.tight_layout()
        return _png(fig)
    finally:
        plt.close(fig)


def all_series_png(series: list[Series], title: str = "") -> bytes:
    """Several series: one guest on several hypervisors, several guests, or several balloon targets.
    More than MAX_PER_AXES series are split into panels, one per currentMemory (or per group of
    five), stacked, so no line hides another."""
    plt = _pyplot()
    groups: dict[int, list[Series]] = {}
    for s in series:
        groups.setdefault(s.current_memory_mib, []).append(s)
    panels = [g for _, g in sorted(groups.items(), reverse=True)] if len(series) > MAX_PER_AXES else [series]
    panels = [p[i:i + MAX_PER_AXES] for p in panels for i in range(0, len(p), MAX_PER_AXES)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(FIG_W, 0.6 + 3.3 * len(panels)), squeeze=False)
    try:
        memory_values = sorted({p.memory_mib for s in series for p in s.points})
        heights = []
        for ax, members in zip(axes[:, 0], panels):
            y0, y1 = _y_range(members)
            ax.set_ylim(y0, y1)
            for level in sorted({s.current_memory_mib for s in members}):
                ax.axhline(level, linestyle="--", color="#555555", linewidth=1.0)
            same = len({s.legend_label for s in members}) == 1
            several = len({s.current_memory_mib for s in members}) > 1
            looks = [(*style(s, i), linestyle(s)) for i, s in enumerate(members)]
            # series that would look alike (one guest at several targets, one kernel given memory three
            # ways): each its own colour and marker, the line still its hypervisor's
            alike = len(set(looks)) < len(looks) or (same and several)
            for i, s in enumerate(members):
                color, marker, line = looks[i]
                if alike:
                    color, marker = _COLORS[i % len(_COLORS)], "ov^sD<>"[i % 7]
                label = (f"currentMemory {s.current_memory_mib} MiB" if same else s.legend_label) if several \
                    else s.legend_label
                _draw_series(ax, s, (color, marker, line), label, y0 + (y1 - y0) * 0.04, slot=i)
            _gib_axis(ax, memory_values)
            ax.set_ylabel("MiB seen by the guest")
            currents = sorted({s.current_memory_mib for s in members})
            ax.set_title(_wrapped(f"{title} (currentMemory dashed)" if title and len(panels) == 1 else
                                  "currentMemory " + " and ".join(f"{c} MiB" for c in currents) + " (dashed)"))
            heights.append(3.3 + _legend_below(ax))
        axes[0, 0].get_gridspec().set_height_ratios(heights)
        fig.set_size_inches(FIG_W, 0.6 + sum(heights))
        fig.tight_layout()
        return _png(fig)
    finally:
        plt.close(fig)


def lost_png(series: list[Series], fits: list[LawCurve | None]) -> bytes:
    """currentMemory minus what the guest sees, against memory, with each guest's loss by the kernel's
    sizing rules (steps where the kernel steps)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(FIG_W, FIG_H))
    try:
        for i, (s, fit) in enumerate(zip(series, fits)):
            color, marker = style(s, i)
            xs = [p.memory_mib / 1024 for p in s.measured for _ in p.seen]
            ys = [s.current_memory_mib - v for p in s.measured for v in p.seen]
            label = s.legend_label if hasattr(s, "legend_label") else s.title
            ax.scatter(xs, ys, color=color, marker=marker, s=22, zorder=3,
                       label=label + (f": {fit.slope:.1f} MiB per GiB" if fit else ""))
            if fit:  # the rules' curve, drawn through many sizes so that its steps show where they are
                import numpy as np

                grid = np.geomspace(min(xs), max(xs), 400)
                ax.plot(grid, [fit(x) for x in grid], color=color, linewidth=1.0, linestyle=linestyle(s), zorder=2)
            elif s.measured:  # no rule describes it (Xen PV): the medians, joined
                ax.plot([p.memory_mib / 1024 for p in s.measured], [s.current_memory_mib - p.median for p in s.measured],
                        color=color, linewidth=1.2, linestyle=linestyle(s), zorder=2)
            died = [p for p in s.failed if p.died]
            if died:  # the guest lost all of currentMemory: drawn there, as the cross it is elsewhere
                ax.scatter([p.memory_mib / 1024 for p in died], [s.current_memory_mib] * len(died), color=color,
                           marker=_FAIL_MARKERS["oom"], s=60, zorder=4, clip_on=False)
        dead_at = sorted({s.current_memory_mib for s in series for p in s.failed if p.died})
        for level in dead_at:
            ax.axhline(level, linestyle=":", color="#555555", linewidth=1.0, zorder=1,
                       label=None if level != dead_at[0] else
                       f"all of currentMemory ({level} MiB) lost: the guest died (x)" if len(dead_at) == 1 else
                       "all of its currentMemory lost: the guest died (x, dotted)")
        values = sorted({p.memory_mib for s in series for p in s.points})
        ax.set_xscale("log", base=2)
        ax.set_xticks([v / 1024 for v in values])
        ax.set_xticklabels([mib_label(v).replace(" GiB", "G").replace(" MiB", "M") for v in values])
        ax.minorticks_off()
        ax.set_xlim(values[0] / 1024 / 1.3, values[-1] / 1024 * 1.3)
        ax.set_xlabel("memory (log scale)")
        ax.set_ylabel("MiB lost (currentMemory - seen)")
        ax.set_title("Memory lost to a large <memory>")
        ax.set_ylim(bottom=0, top=max([s.current_memory_mib for s in series] or [1]) * 1.08)
        fig.set_size_inches(FIG_W, FIG_H + _legend_below(ax, shown=len(series) <= MAX_LEGEND))
        fig.tight_layout()
        return _png(fig)
    finally:
        plt.close(fig)
