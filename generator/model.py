"""What the committed records say about a ballooned guest, as numbers a tool can ask: how much of
`currentMemory` a kernel loses at a given `memory` ceiling, and how little a guest was left with
when it still survived its balloon, or already died.

A curve is one guest kernel on one hypervisor family, from the points measured with the plain
balloon (no autodeflate, no free page reporting) at `currentMemory` 1024 MiB: lost = currentMemory
minus what the guest saw once the balloon settled (the median of the repeats). What a guest loses
depends on its ceiling, not on `currentMemory` (the kernel sizes its bookkeeping for all of `memory`
at boot), so one curve serves any `currentMemory`. Between measured sizes the curve is interpolated
linearly; outside them it is extended from the two nearest points and says so.

The survival bounds come from every point whose guest booted (MemTotal at boot known): what the
balloon left it, currentMemory - (memory - MemTotal at boot), for those that lived and those that
ran out of memory.
"""
from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from . import hypervisors
from . import laws as L
from .errors import UserError
from .manifest import at_defaults, find_manifests, load
from .plan import points, results_dir
from .results import as_record, existing
from .units import mib_label

DIED = ("oom", "panic")


def family(domain_type: str) -> str:
    """The hypervisor family of a domain type: 'qemu' for kvm and TCG (the guest's kernel sees the
    same machine), 'xen' for Xen."""
    return hypervisors.for_domain_type(domain_type).name


def series_of(release: str) -> str:
    """'6.1' of '6.1.0-56-amd64': kernels of one series size their bookkeeping alike."""
    m = re.match(r"(\d+)\.(\d+)", release or "")
    return f"{m.group(1)}.{m.group(2)}" if m else ""


def along(points: list[tuple[float, float]], x: float, floor: float | None = None) -> tuple[float, str]:
    """(value at x, how it was found) on measured (size MiB, value) points: the measured value, else
    linear between the two measured neighbours, else extended from the two nearest (not below `floor`),
    and flat from a single point. The one interpolation that audit, the model and predict share."""
    points = sorted(points)
    for px, py in points:
        if px == x:
            return py, "measured"
    if len(points) == 1:
        return points[0][1], f"extrapolated (flat) from the one size measured, {mib_label(points[0][0])}"
    if x < points[0][0]:
        (x0, y0), (x1, y1), how = points[0], points[1], "extrapolated below"
    elif x > points[-1][0]:
        (x0, y0), (x1, y1), how = points[-2], points[-1], "extrapolated above"
    else:
        i = next(i for i, (px, _) in enumerate(points) if px > x)
        (x0, y0), (x1, y1) = points[i - 1], points[i]
        return y0 + (y1 - y0) * (x - x0) / (x1 - x0), "interpolated"
    value = y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if floor is not None:
        value = max(floor, value)
    return value, f"{how} the measured sizes, from {mib_label(x0)} and {mib_label(x1)}"


@dataclass
class Curve:
    family: str                 # qemu | xen
    kernel: str                 # the guest kernel's release, or a description for a combined curve
    points: list[tuple[int, float]] = field(default_factory=list)  # (memory MiB, MiB lost), sorted
    experiments: set = field(default_factory=set)

    laws: object = None         # laws.Laws of this kernel where its boots were itemized

    def lost(self, memory_mib: float) -> tuple[float, str]:
        """(MiB lost at this ceiling, how it was found: 'measured', 'from the kernel's rules', or where no
        boot of the kernel was itemized 'interpolated' or 'extrapolated …'); never less than nothing lost."""
        if not self.points:
            raise ValueError("empty curve")
        if self.laws is not None and not any(m == memory_mib for m, _ in self.points):
            g = L.guest_of(int(memory_mib), int(memory_mib), "balloon", self.laws.domain_type)
            return max(0.0, self.laws.set_aside_kib(g) / 1024), "from the kernel's rules"
        return along(self.points, memory_mib, floor=0.0)

    def per_gib(self) -> float:
        """MiB lost per GiB of ceiling: the kernel's rules' marginal cost where its boots were itemized
        (laws.marginal_per_gib: between powers of two, the bounce buffer's step aside); else the
        least-squares slope over the measured points (Xen PV, whose loss the rules do not cover)."""
        if self.laws is not None:
            return L.marginal_per_gib(self.laws)
        xs = [m / 1024 for m, _ in self.points]
        ys = [v for _, v in self.points]
        if len(set(xs)) < 2:
            return 0.0
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


@dataclass
class Bounds:
    """What the balloon left guests that survived, and guests that died, in MiB."""
    survived_min: float | None = None   # the least any surviving guest was left with
    died_max: float | None = None       # the most any dying guest was left with
    survived_n: int = 0
    died_n: int = 0


@dataclass
class Model:
    curves: list[Curve]
    bounds: dict[str, Bounds]           # per hypervisor family
    records: int = 0

    def curve(self, fam: str, kernel: str) -> tuple[Curve | None, str]:
        """The curve for a guest kernel on a family, and what it rests on ('measured for …', or an
        estimate from the kernels measured); None when nothing was measured on that family."""
        own = [c for c in self.curves if c.family == fam]
        if not own:
            return None, f"no committed records for {fam}"
        for c in own:
            if kernel and c.kernel == kernel:
                return c, f"measured for kernel {c.kernel}"
        same = [c for c in own if kernel and series_of(c.kernel) == series_of(kernel)]
        if same:
            return same[0], f"measured for kernel {same[0].kernel} (the same {series_of(kernel)} series)"
        combined = Curve(fam, "median of " + ", ".join(sorted(c.kernel for c in own)))
        sizes = sorted({m for c in own for m, _ in c.points})
        for m in sizes:
            values = [v for c in own for mm, v in c.points if mm == m]
            combined.points.append((m, statistics.median(values)))
        why = "guest kernel unknown" if not kernel else f"kernel {kernel} not measured"
        return combined, f"estimate: {why}; the median of the {len(own)} kernel(s) measured on {fam}"


def _guest_kernel(record: dict) -> str:
    record = as_record(record)
    return record.guest_kernel or ""


def build_model(records: list[dict]) -> Model:
    """The curves and bounds of a list of records (any experiments)."""
    records = [as_record(r) for r in records]
    by_curve: dict[tuple, dict[int, list[float]]] = {}
    experiments: dict[tuple, set] = {}
    bounds: dict[str, Bounds] = {}
    for r in records:
        fam = family(r.domain_type or "")
        memory, current = r.memory_mib, r.current_memory_mib
        plain = at_defaults(r)
        if not plain or not isinstance(memory, int) or not isinstance(current, int):
            continue
        if r.status == "ok" and current == 1024 and isinstance(r.memtotal_settled_kib, int):
            key = (fam, _guest_kernel(r))
            by_curve.setdefault(key, {}).setdefault(memory, []).append(current - r.memtotal_settled_kib / 1024)
            experiments.setdefault(key, set()).add((r.experiment or ""))
        boot = r.memtotal_boot_kib
        # only where guests boot with all of memory and the balloon takes it back (not a Xen PV guest)
        if isinstance(boot, int) and hypervisors.for_domain_type(r.domain_type or "").inflates_after_boot:
            left = current - (memory - boot / 1024)
            b = bounds.setdefault(fam, Bounds())
            if r.status == "ok":
                b.survived_n += 1
                b.survived_min = left if b.survived_min is None else min(b.survived_min, left)
            elif r.status in DIED:
                b.died_n += 1
                b.died_max = left if b.died_max is None else max(b.died_max, left)
    curves = []
    fitted = L.all_laws(records)
    for (fam, kernel), sizes in sorted(by_curve.items()):
        c = Curve(fam, kernel, [(m, statistics.median(v)) for m, v in sorted(sizes.items())], experiments[(fam, kernel)])
        # the laws of this kernel's series on a domain type of this family (TCG first: the most boots)
        c.laws = next((fitted[(t, L.series_of(kernel))] for t in hypervisors.for_domain_type(
            next((r.domain_type for r in records if family(r.domain_type or "") == fam), "")).domain_types[::-1]
            if (t, L.series_of(kernel)) in fitted), None)
        curves.append(c)
    return Model(curves, bounds, len(records))


def committed_records(experiments: Path) -> list[dict]:
    """Every record of every manifest under `experiments` (the committed archive)."""
    out = []
    for path in find_manifests(experiments):
        try:
            manifest = load(path, check_files=False)
        except UserError:
            continue  # a manifest that does not load costs its records, not the model
        folder = results_dir(manifest)
        for p in points(manifest):
            try:
                rec = existing(p, folder)
            except UserError:
                continue  # a broken record costs its point, not the model
            if rec is not None:
                out.append(dict(rec, experiment=manifest.experiment))
    return out


def guest_labels(experiments: Path) -> dict[str, str]:
    """Each guest's name in the manifests under `experiments` -> how the posts name it ('Debian 12 kernel 6.1')."""
    out: dict[str, str] = {}
    for path in find_manifests(experiments):
        try:
            manifest = load(path, check_files=False)
        except UserError:
            continue
        for g in manifest.guests:
            out.setdefault(g.name, g.label or g.name)
    return out


def load_model(experiments: Path) -> Model:
    model = build_model(committed_records(experiments))
    if not model.curves:
        raise UserError(f"{experiments}: no committed records to model a guest's loss from; run make report first")
    return model
