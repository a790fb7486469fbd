"""An audit as a page of the site: `audit --post SLUG` writes content/audits/SLUG/index.md and its
graph (the measured loss curves, with the audited guests as points on them), through the same
escaping and all-or-nothing writes as the posts."""
from __future__ import annotations

import datetime as _dt
import io
from pathlib import Path

from ..errors import UserError
from ..manifest import NAME_RE
from ..model import Model, family
from ..safe import write_all_beneath
from .engine import HUGO_CONFIGS
from .templating import jinja_env, render, templates_dir


def _graph(hosts, model: Model) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=150)
    fams = {family(g.domain_type) for h in hosts for g in h.guests} or {"qemu"}
    for c in model.curves:
        if c.family in fams:
            ax.plot([m / 1024 for m, _ in c.points], [v for _, v in c.points], lw=1, alpha=0.6,
                    label=f"measured: {c.family}, kernel {c.kernel}")
    xs = [g.memory_mib / 1024 for h in hosts for g in h.guests if g.lost_mib is not None and g.memory_mib]
    ys = [g.lost_mib for h in hosts for g in h.guests if g.lost_mib is not None and g.memory_mib]
    if xs:
        ax.scatter(xs, ys, color="black", zorder=3, s=18, label="your guests: currentMemory minus what they see")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("memory (GiB)")
    ax.set_ylabel("MiB lost")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def write_page(hosts, model: Model, site: Path, slug: str, lower_to_mib: int | None = None) -> list[str]:
    import tomli_w
    from markupsafe import Markup

    if not NAME_RE.fullmatch(slug):
        raise UserError(f"--post {slug!r}: not a valid page name (lowercase letters, digits, '-', '_', '.')")
    if not any((site / name).exists() for name in HUGO_CONFIGS):
        raise UserError(f"{site}: not a Hugo site (no hugo.toml or config.toml); pass --site with your blog's folder")
    rows = [g for h in hosts for g in h.guests]

    def total(key):
        return sum(getattr(g, key) or 0 for g in rows)
    date = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    front = {"title": f"Memory audit: {len(hosts)} host(s), {len(rows)} guest(s)", "date": date,
             "Description": f"{total('ceiling_mib'):,.0f} MiB of currentMemory lost to memory ceilings",
             "Tags": ["memory", "audit"]}
    env = jinja_env(templates_dir())
    alt = (f"Graph: MiB lost against memory (log scale), the measured curves and {len(rows)} audited guest(s) "
           "as points.")
    text = render(env, "audit.md.j2", str(templates_dir() / "audit.md.j2"),
                   front_matter=Markup("+++\n" + tomli_w.dumps(front) + "+++\n"), hosts=hosts, guests=len(rows),
                   lost=total("lost_mib"), ceiling=total("ceiling_mib"), give_back=total("give_back_mib"),
                   warnings=sum(1 for g in rows if g.warning), changed=sum(1 for g in rows if g.changed),
                   lower_to=lower_to_mib,
                   date=date[:10], model_records=model.records, alt=alt, graph=f"{slug}.png")
    folder = Path("content") / "audits" / slug
    write_all_beneath(site.resolve(), [(folder / "index.md", text.encode()), (folder / f"{slug}.png", _graph(hosts, model))],
                      failed="; nothing was written")
    return [f"  wrote {site / folder / 'index.md'}", f"  wrote {site / folder / (slug + '.png')}"]
