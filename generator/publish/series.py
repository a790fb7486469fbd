"""Records grouped into what a post draws and tabulates: per-record readings (what a guest saw, what
its kernel reserved), a point's records (`SeriesPoint`), a host's guest over memory (`Series`), the
kernel's rules fitted to it (`LawCurve`). Every number leaves here as a claim (claims.py)."""
from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field

from .. import hypervisors, laws
from ..kinds import kind_of_record
from ..manifest import FACTORS
from ..results import Record, as_record
from ..units import mib_label
from .claims import claimed, leaf, size

FAILURE_LABELS = {"oom": "OOM", "panic": "panic", "refused": "refused", "timeout": "timeout", "error": "error"}
PAGE_SIZE = 4096
STRUCT_PAGE = 64  # bytes per 4 KiB page on x86_64: what the kernel pays for every page of <memory>

# a record's dmesg lines may come from someone else: numbers of at most 15 digits (a longer one is not
# a reading, and is not converted)
_RESERVED_RE = re.compile(r"Memory: ([0-9]{1,15})K/([0-9]{1,15})K available .*?(?<![0-9])([0-9]{1,15})K reserved")
_SWIOTLB_RE = re.compile(r"software IO TLB: mapped .*\(([0-9]{1,15})MB\)")
_XEN_MAP_RE = re.compile(r"Xen: \[mem 0x([0-9a-f]{1,16})-0x([0-9a-f]{1,16})\] usable")


def seen_mib(record: dict) -> int | None:
    """What the guest sees: `free -m`'s total, else MemTotal in MiB.

    With autodeflate (deflate-on-OOM) the balloon's pages stay counted in the guest's MemTotal, so
    `free -m` shows the whole ceiling; what the guest can use is that minus the balloon, whose size
    the host reports (memory - actual)."""
    record = as_record(record)
    free = (record.free_m or {}).get("total")
    if free is None:
        kib = record.memtotal_settled_kib
        free = kib // 1024 if kib else None
    if free is None:
        return None
    actual = (record.balloon or {}).get("actual")
    if record.autodeflate and actual and (record.memory_model or "balloon") == "balloon":
        kib = record.memtotal_settled_kib
        if isinstance(kib, int) and kib > 0:   # in KiB, then to the nearest MiB, as the probe's free -m rounds
            return (kib - (record.memory_mib * 1024 - int(actual)) + 512) // 1024
        return int(free) - (record.memory_mib - int(actual) // 1024)
    return int(free)


def reserved_mib(record: dict) -> float | None:
    """What the guest kernel set aside at boot (the 'reserved' of its 'Memory:' line)."""
    record = as_record(record)
    for line in record.dmesg or []:
        m = _RESERVED_RE.search(line)
        if m:
            return int(m.group(3)) / 1024
    return None


def timeline_facts(record: dict) -> dict:
    """What a post uses of a record's balloon timeline ([seconds, actual KiB, …] samples): the smallest
    size the host saw (how far a guest that died got) and the seconds between its first and last change."""
    record = as_record(record)
    timeline = [(s[0], s[1]) for s in record.balloon_timeline or []
                if isinstance(s, (list, tuple)) and len(s) >= 2 and isinstance(s[0], (int, float))
                and isinstance(s[1], int) and not isinstance(s[1], bool) and s[1] > 0]
    moving = [t for (t, a), (_, before) in zip(timeline[1:], timeline) if a != before]
    return {"balloon_low_kib": min(a for _, a in timeline) if timeline else None,
            "balloon_moving_s": round(moving[-1] - moving[0], 1) if len(moving) > 1 else None}


def _timeline_fact(record: dict, key: str):
    """One of timeline_facts, from the build's summary when the record is one, else from the timeline."""
    record = as_record(record)
    return record[key] if key in record else timeline_facts(record)[key]


def swiotlb_mib(record: dict) -> int:
    record = as_record(record)
    for line in record.dmesg or []:
        m = _SWIOTLB_RE.search(line)
        if m:
            return int(m.group(1))
    return 0


def pv_map_end_mib(record: dict) -> int | None:
    """Where the memory map a Xen PV guest was given at boot ends (its last 'usable' range), in MiB.

    Linux maps a PV guest's extra (ballooned-out) memory at boot only up to ten times its initial
    size (EXTRA_MEM_RATIO in arch/x86/xen/setup.c); memory beyond that is not described at all."""
    record = as_record(record)
    ends = [int(m.group(2), 16) + 1 for line in record.dmesg or [] for m in [_XEN_MAP_RE.search(line)] if m]
    return max(ends) // (1024 * 1024) if ends else None


class Items(dict):
    """A point's set-aside by item, MiB: an item its boots did not have is 0, and says which boots say so."""

    def __init__(self, point: "SeriesPoint", values: dict):
        super().__init__(values)
        self._point = point

    def get(self, key, default=None):
        if key in self:
            return self[key]
        if isinstance(default, (int, float)) and not isinstance(default, bool) and default == 0:
            return self._point._claim(0.0, f"item:{key}")
        return default


# The record fields that say which point a record belongs to.
IDENTITY = ("experiment", "host", "guest") + tuple(f.name for f in FACTORS)


def point_where(records: list, memory_mib: int | None = None) -> dict:
    """The identity fields every one of `records` shares (memory_mib at least)."""
    where = {}
    for name in IDENTITY:
        values = {repr(r.get(name)) for r in records}
        if len(values) == 1 and records and records[0].get(name) is not None:
            where[name] = records[0].get(name)
    if memory_mib is not None:
        where["memory_mib"] = memory_mib
    return where


class RecordQueries:
    """Questions asked of a group of records (`records`, all matching `where`), answered as claims."""

    @property
    def n_records(self) -> int:
        return claimed(len(self.records), leaf("record", self.where, "count"))

    def smallest_surviving(self, memory_mib: int) -> int | None:
        """The smallest currentMemory whose guest lived at this memory (a claim), or None."""
        values = [r.current_memory_mib for r in self.records if r.memory_mib == memory_mib and r.status == "ok"]
        where = {**self.where, "memory_mib": memory_mib, "status": "ok"}
        return claimed(min(values), leaf("field:current_memory_mib", where, "min")) if values else None

    def first_death(self, domain_type: str) -> int | None:
        """The smallest memory at which a guest on this domain type died (a claim), or None."""
        values = [r.memory_mib for r in self.records if r.domain_type == domain_type and r.status in ("oom", "panic")]
        where = {**self.where, "domain_type": domain_type, "status": ["oom", "panic"]}
        return claimed(min(values), leaf("field:memory_mib", where, "min")) if values else None


@dataclass
class SeriesPoint(RecordQueries):
    memory_mib: int
    records: list = field(default_factory=list)

    def __post_init__(self):
        self.records = [as_record(r) for r in self.records]
        self.memory_mib = size(self.memory_mib)   # a size the sweep measured, printed as a claim

    @property
    def where(self) -> dict:
        """The point's identity, as record fields (what a claim selects its records by)."""
        return point_where(self.records, self.memory_mib)

    def _claim(self, value, of: str, agg: str = "median", ok: bool = False):
        return claimed(value, leaf(of, {**self.where, **({"status": "ok"} if ok else {})}, agg))

    @property
    def ok(self) -> list[dict]:
        return [r for r in self.records if r.status == "ok" and seen_mib(r) is not None]

    @property
    def seen(self) -> list[int]:
        return [seen_mib(r) for r in self.ok]

    @property
    def median(self) -> float | None:
        return self._claim(statistics.median(self.seen), "seen_mib", ok=True) if self.seen else None

    @property
    def spread(self) -> tuple[int, int] | None:
        return (self._claim(min(self.seen), "seen_mib", "min", ok=True),
                self._claim(max(self.seen), "seen_mib", "max", ok=True)) if self.seen else None

    @property
    def failures(self) -> list[dict]:
        return [r for r in self.records if r.status != "ok"]

    @property
    def status(self) -> str:
        """'ok' if any repeat measured, else the first failure's status."""
        return "ok" if self.ok else (self.failures[0]["status"] if self.failures else "missing")

    @property
    def failure_label(self) -> str:
        return FAILURE_LABELS.get(self.status, self.status)

    @property
    def reason(self) -> str:
        return self.failures[0].reason or "" if self.failures else ""

    @property
    def died(self) -> list[dict]:
        """The repeats whose guest died (out of memory, or a panic)."""
        return [r for r in self.records if r.status in ("oom", "panic")]

    @property
    def n_died(self) -> int:
        return claimed(len(self.died), leaf("record", {**self.where, "status": ["oom", "panic"]}, "count"))


    def _set_asides(self) -> list[tuple[float, bool]]:
        """Per repeat: (MiB of `memory` its kernel did not count as usable at boot, whether that is the
        kernel's own 'Memory: … reserved' figure because MemTotal at boot was never read)."""
        out = []
        for r in self.records:
            boot = r.memtotal_boot_kib
            if isinstance(boot, int) and 0 < boot <= r.memory_mib * 1024:
                out.append((r.memory_mib - boot / 1024, False))
            elif (reserved := reserved_mib(r)) is not None:   # a full system that died before it was read
                out.append((reserved, True))
        return out

    @property
    def set_aside_at_boot(self) -> float | None:
        """MiB of `memory` the guest's kernel did not count as usable at boot (memory minus MemTotal at
        boot), the median over every repeat that reported it, those that later died included."""
        values = [v for v, _ in self._set_asides()]
        return self._claim(statistics.median(values), "set_aside_mib") if values else None

    @property
    def reserved_line(self) -> float | None:
        """The kernel's own 'Memory: … reserved' figure (MiB), the median over the repeats whose log had it."""
        values = [v for r in self.records if (v := reserved_mib(r)) is not None]
        return self._claim(statistics.median(values), "reserved_mib") if values else None

    @property
    def set_aside_from_reserved(self) -> bool:
        """Whether set_aside_at_boot is (partly) the kernel's own 'Memory: … reserved' figure, a slightly
        different measure than memory minus MemTotal."""
        return any(from_reserved for _, from_reserved in self._set_asides())

    @property
    def settled_kib(self) -> float | None:
        """MemTotal once the balloon settled (KiB), the median over the repeats that lived: finer than
        `free -m`'s whole MiB where a difference of a few MiB is the point."""
        values = [r.memtotal_settled_kib for r in self.ok if isinstance(r.memtotal_settled_kib, int)]
        return self._claim(statistics.median(values), "field:memtotal_settled_kib", ok=True) if values else None

    def _floors(self) -> list[float]:
        """For the repeats that died: the smallest size (MiB) the host saw the balloon leave the guest."""
        return [low / 1024 for r in self.died if isinstance(low := _timeline_fact(r, "balloon_low_kib"), int) and low > 0]

    @property
    def balloon_floors(self) -> tuple | None:
        """The smallest and the largest of those per-repeat floors (MiB), each a claim."""
        floors = self._floors()
        if not floors:
            return None
        return (self._claim(min(floors), "balloon_floor_mib", "min"), self._claim(max(floors), "balloon_floor_mib", "max"))

    @property
    def balloon_floor(self) -> float | None:
        """The median of those floors over the repeats that died. The target was currentMemory; this is
        how close the balloon came."""
        floors = self._floors()
        return self._claim(statistics.median(floors), "balloon_floor_mib") if floors else None

    @property
    def inflating_s(self) -> float | None:
        """For the repeats that died: seconds the balloon inflated before the end (median); the probe's
        phases say, for a full system the host's samples of the balloon."""
        values = [(r.phases or {}).get("inflation_host_s") or _timeline_fact(r, "balloon_moving_s")
                  for r in self.died]
        values = [v for v in values if isinstance(v, (int, float))]
        return self._claim(statistics.median(values), "inflating_s") if values else None

    @property
    def reserved(self) -> float | None:
        values = [v for v in (reserved_mib(r) for r in self.ok) if v is not None]
        return self._claim(statistics.median(values), "reserved_mib", ok=True) if values else None

    @property
    def swiotlb(self) -> int:
        return self._claim(max((swiotlb_mib(r) for r in self.ok), default=0), "swiotlb_mib", "max", ok=True)

    @property
    def pv_map_end(self) -> int | None:
        return self._claim(max((v for v in (pv_map_end_mib(r) for r in self.ok) if v is not None), default=None),
                           "pv_map_end_mib", "max", ok=True)

    def meminfo_median_mib(self, key: str) -> float | None:
        """The median over repeats of one /proc/meminfo field, MiB ('MemAvailable': the kernel's own
        estimate; `free -m` shows MemFree in its place when the kernel says 0)."""
        values = [(r.meminfo or {}).get(key) for r in self.ok]
        values = [v / 1024 for v in values if isinstance(v, (int, float))]
        return self._claim(statistics.median(values), f"meminfo:{key}", ok=True) if values else None

    def free_median(self, column: str) -> float | None:
        """The median over repeats of one `free -m` column ('used', 'available', …)."""
        values = [(r.free_m or {}).get(column) for r in self.ok]
        values = [v for v in values if isinstance(v, (int, float))]
        return self._claim(statistics.median(values), f"free:{column}", ok=True) if values else None

    @property
    def agreeing(self) -> tuple[int, int]:
        """(readings whose agent MemTotal matched the balloon's available, readings cross-checked)."""
        checks = [r.cross_check for r in self.ok if r.cross_check]
        where = {**self.where, "status": "ok"}
        return (claimed(sum(1 for c in checks if c.get("agree")), leaf("cross_check_agrees", where, "count")),
                claimed(len(checks), leaf("cross_check", where, "count")))

    @property
    def pv_capped(self) -> bool:
        """A Xen PV guest whose boot-time memory map stops short of `memory`."""
        return self.pv_map_end is not None and self.pv_map_end < self.memory_mib

    @property
    def items(self) -> dict[str, float]:
        """The set-aside by item (MiB, the median over repeats whose records are itemized), largest
        first, `unexplained` last; {} where no record of the point was booted with memblock=debug."""
        itemized = [r.set_aside_kib for r in self.records if isinstance(r.set_aside_kib, dict)]
        if not itemized:
            return {}
        names = {k for d in itemized for k in d}
        out = {k: statistics.median(d.get(k, 0) for d in itemized) / 1024 for k in names}
        order = sorted((k for k in out if k != "unexplained"), key=lambda k: -out[k])
        return Items(self, {k: self._claim(out[k], f"item:{k}") for k in order + ["unexplained"] if k in out})

    @property
    def reserve_mib(self) -> float | None:
        """The page allocator's reserve at boot (watermarks and lower zones' protection), MiB."""
        from ..predict import reserve_kib

        values = [v / 1024 for r in self.records if (v := reserve_kib(r.zone_reserves)) is not None]
        return self._claim(statistics.median(values), "reserve_mib") if values else None

    @property
    def used_at_boot_mib(self) -> float | None:
        from ..predict import used_kib

        values = [v / 1024 for r in self.records if (v := used_kib(r)) is not None]
        return self._claim(statistics.median(values), "used_at_boot_mib") if values else None

    @property
    def margin_mib(self) -> float | None:
        """The survival margin (predict.py): currentMemory - set-aside - in use at boot - reserve."""
        from ..predict import margin_mib

        values = [m for r in self.records if (m := margin_mib(r)) is not None]
        return self._claim(statistics.median(values), "margin_mib") if values else None

    @property
    def balloon_left_mib(self) -> float | None:
        """What the host said the guest had once its balloon stopped (libvirt's `actual`), MiB, the median."""
        values = [r.balloon["actual"] / 1024 for r in self.ok if isinstance((r.balloon or {}).get("actual"), int)]
        return self._claim(statistics.median(values), "balloon_actual_mib", ok=True) if values else None

    @property
    def xen_ballooned_out(self) -> float | None:
        """MiB Xen's balloon held when the probe read it (low + high), the median over repeats."""
        values = [((r.xen_balloon or {}).get("low_kb", 0) + (r.xen_balloon or {}).get("high_kb", 0))
                  / 1024 for r in self.ok if r.xen_balloon]
        return self._claim(statistics.median(values), "xen_ballooned_out_mib", ok=True) if values else None


@dataclass
class Series:
    """One graph's worth: a host, a guest, one currentMemory, every memory measured."""

    host: str
    guest: str
    guest_label: str
    factors: dict          # every factor but the x axis (memory): currentMemory, memory model, …
    domain_type: str
    points: list = field(default_factory=list)
    file_stem: str = ""     # 'qemu-debian-1024': the graph's file name
    stem_tail: str = ""     # 'debian-1024': the same without hypervisor and host

    @property
    def current_memory_mib(self) -> int:
        return size(self.factors["current_memory_mib"])

    @property
    def variant(self) -> str:
        """The factors beyond currentMemory that are not at their default, e.g. 'virtio-mem, autodeflate'."""
        return ", ".join(f.label(self.factors[f.name]) for f in FACTORS
                         if f.name in self.factors and f.name != "current_memory_mib" and f.shown(self.factors[f.name]))

    @property
    def hypervisor(self) -> str:
        return hypervisors.label(self.domain_type)

    @property
    def emulated(self) -> bool:
        """Whether its guests ran on an emulated CPU (QEMU's TCG)."""
        return hypervisors.for_domain_type(self.domain_type).emulates(self.domain_type)

    def reserved_own(self, p: "SeriesPoint") -> float | None:
        """What the kernel itself reserved at a point (MiB, the table's 'reserved' column), or None. A
        guest whose memory map reaches past currentMemory (Xen PV: its ballooned-out pages are mapped,
        and counted reserved) has that part taken off; where that leaves nothing sensible, None."""
        if p.reserved is None or not p.pv_map_end:
            return p.reserved
        own = p.reserved - (p.pv_map_end - self.current_memory_mib)
        return own if own >= 0 else None

    @property
    def title(self) -> str:
        return f"{self.hypervisor}, {self.guest_label}, currentMemory {self.current_memory_mib} MiB" + \
            (f", {self.variant}" if self.variant else "")

    @property
    def legend_label(self) -> str:
        """Short, for a legend whose graph's title gives currentMemory."""
        return f"{self.hypervisor}, {self.guest_label}" + (f", {self.variant}" if self.variant else "")

    @property
    def key(self) -> str:
        """'local/debian/c1024', with the other factors' parts when not at their default."""
        return f"{self.host}/{self.guest}/" + "-".join(f.key(self.factors[f.name]) for f in FACTORS
                                                        if f.name in self.factors and f.shown(self.factors[f.name]))

    @property
    def measured(self) -> list[SeriesPoint]:
        return [p for p in self.points if p.ok]

    @property
    def kernels(self) -> list[str]:
        return sorted({r.guest_kernel for p in self.points for r in p.records if r.guest_kernel})

    @property
    def is_system(self) -> bool:
        """A full system (a distribution on a disk, read through its agent), not the probe."""
        return any(not kind_of_record(r).bare for p in self.points for r in p.records)

    @property
    def failed(self) -> list[SeriesPoint]:
        return [p for p in self.points if not p.ok]

    def lean(self) -> "Series":
        """A copy with only what a graph draws: each record cut to its status and what the guest saw.
        Sent to the processes that draw graphs, so a big experiment is not pickled whole each time."""
        points = [SeriesPoint(p.memory_mib, [Record(status=r.status, free_m={"total": seen_mib(r)},
                                                    guest_kernel=r.guest_kernel, guest_kind=r.guest_kind)
                                             for r in p.records]) for p in self.points]
        return Series(self.host, self.guest, self.guest_label, self.factors, self.domain_type, points,
                      self.file_stem, self.stem_tail)

    def at(self, memory_mib: int) -> SeriesPoint | None:
        return next((p for p in self.points if p.memory_mib == memory_mib), None)

    def lost(self, p: SeriesPoint) -> float | None:
        return None if p.median is None else self.current_memory_mib - p.median

    def fit(self) -> "LawCurve | None":
        """The loss by the kernel's sizing rules (laws.py), fitted to this series' itemized boots; none
        where its guests inflate no balloon at boot (Xen PV: its loss is its own map's) or none of its
        boots was itemized."""
        dtype = self.domain_type
        if not hypervisors.for_domain_type(dtype).inflates_after_boot:
            return None
        records = [r for p in self.points for r in p.records]
        kernels = tuple(sorted({r.guest_kernel for r in records if r.guest_kernel}))
        if not kernels or len({laws.series_of(k) for k in kernels}) > 1:
            return None
        fitted = laws.fit(records, dtype, kernels)
        if fitted is None or not fitted.constants:
            return None
        return LawCurve(fitted, self.current_memory_mib, dtype, self.factors.get("memory_model") or "balloon",
                        {"where": point_where(records), "domain_type": dtype, "kernels": list(kernels)})

    def alt_text(self) -> str:
        """Under ~300 characters, unique per series: what this graph shows."""
        text = f"Memory seen by {self.legend_label} (currentMemory {self.current_memory_mib} MiB) against memory"
        if self.measured:
            first, last = self.measured[0], self.measured[-1]
            if first is last:
                text += f": {first.median:g} MiB at {mib_label(first.memory_mib)}"
            else:
                text += f": {first.median:g} MiB at {mib_label(first.memory_mib)}, {last.median:g} at {mib_label(last.memory_mib)}"
        fails = [f"{p.failure_label} at {mib_label(p.memory_mib)}" for p in self.failed]
        if fails:
            text += "; " + ", ".join(fails[:3]) + ("…" if len(fails) > 3 else "")
        return text[:300] + "."


@dataclass
class LawCurve:
    """What a guest loses against memory (GiB -> MiB), by the kernel's sizing rules: callable like a
    line, with the marginal cost per GiB (`slope`) and the bounce buffer's step (`step`) as figures."""

    laws: "laws.Laws"
    current_memory_mib: int
    domain_type: str
    memory_model: str = "balloon"
    source: dict = field(default_factory=dict)  # the records it was fitted to (a claim's query)

    def _claim(self, value, figure: str, **args):
        return claimed(value, {"law": figure, **self.source, **args}) if self.source else value

    def guest(self, memory_mib: int) -> "laws.Guest":
        return laws.guest_of(memory_mib, min(self.current_memory_mib, memory_mib), self.memory_model, self.domain_type)

    def __call__(self, gib: float) -> float:
        return self.laws.set_aside_kib(self.guest(int(round(gib * 1024)))) / 1024

    @property
    def slope(self) -> float:
        """MiB per GiB of memory between two powers of two, above the step."""
        return self._claim(laws.marginal_per_gib(self.laws), "slope")

    @property
    def step(self) -> float:
        return self._claim(self.laws.bounce_kib / 1024, "step")

    @property
    def page_descriptors_per_gib(self) -> float:
        return self._claim(16 + self.laws.page_descriptors[1] / 1024, "page_descriptors_per_gib")

    def nothing_left_gib(self) -> float:
        """The smallest memory at which the set-aside alone is all of currentMemory, GiB."""
        lo, hi = self.current_memory_mib, 1 << 24
        if self(hi / 1024) < self.current_memory_mib:
            return self._claim(hi / 1024, "nothing_left_gib")
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self(mid / 1024) < self.current_memory_mib else (lo, mid)
        return self._claim(hi / 1024, "nothing_left_gib")

    def worst_kib(self, series: "Series") -> float:
        """The largest difference between the rules and a boot of the series (KiB of set-aside)."""
        diffs = [abs(self.laws.set_aside_kib(self.guest(r.memory_mib)) - (r.memory_mib * 1024 - r.memtotal_boot_kib))
                 for p in series.points for r in p.records if isinstance(r.memtotal_boot_kib, int)]
        return self._claim(max(diffs, default=0.0), "worst_kib", over=point_where([r for p in series.points
                                                                             for r in p.records]))


@dataclass
class Fit:
    """Least squares y = intercept + slope * x, with the points it came from."""

    slope: float
    intercept: float
    n: int
    r2: float

    @classmethod
    def of(cls, pts: list[tuple[float, float]]) -> "Fit | None":
        if len({x for x, _ in pts}) < 2:
            return None
        n = len(pts)
        mx = sum(x for x, _ in pts) / n
        my = sum(y for _, y in pts) / n
        sxx = sum((x - mx) ** 2 for x, _ in pts)
        sxy = sum((x - mx) * (y - my) for x, y in pts)
        slope = sxy / sxx
        intercept = my - slope * mx
        ss_tot = sum((y - my) ** 2 for _, y in pts)
        ss_res = sum((y - intercept - slope * x) ** 2 for x, y in pts)
        return cls(slope, intercept, n, 1 - ss_res / ss_tot if ss_tot else 1.0)

    def __call__(self, x: float) -> float:
        return self.intercept + self.slope * x


def build_series(records: list[dict], guest_labels: dict[str, str], host_count: int) -> list[Series]:
    """Group records by host, guest and every factor but memory (the x axis); name each graph's file
    like the original's ('qemu-debian-1024.png', with the other factors' parts where not default)."""
    groups: dict[tuple, Series] = {}
    others = [f for f in FACTORS if not f.axis]
    records = [as_record(r) for r in records]
    for r in sorted(records, key=lambda r: (r.host, r.guest, *[_sortable(r.get(f.name)) for f in others],
                                            r.memory_mib, r.repeat or 1)):
        values = {f.name: r.get(f.name, f.default) for f in others}
        key = (r.host, r.guest, *values.values())
        s = groups.get(key)
        if s is None:
            label = guest_labels.get(r.guest) or _kernel_label(r.guest_kernel) or r.guest
            s = groups[key] = Series(r.host, r.guest, label, values, "")
        if r.domain_type and not s.domain_type:
            s.domain_type = r.domain_type
        p = s.at(r.memory_mib)
        if p is None:
            p = SeriesPoint(r.memory_mib)
            s.points.append(p)
        p.records.append(r)
    out = list(groups.values())
    hosts_of_type: dict[str, set[str]] = {}
    for s in out:
        s.points.sort(key=lambda p: p.memory_mib)
        s.domain_type = s.domain_type or "unknown"
        hosts_of_type.setdefault(s.domain_type, set()).add(s.host)
    for s in out:
        # 'xen-debian-1024.png' as in 2012; the host's name only where two hosts share a hypervisor
        prefix = f"{s.host}-" if len(hosts_of_type[s.domain_type]) > 1 else ""
        variant = "".join(f"-{f.key(s.factors[f.name])}" for f in others
                          if f.name != "current_memory_mib" and f.shown(s.factors[f.name]))
        s.stem_tail = f"{s.guest}-{s.current_memory_mib}{variant}"
        s.file_stem = f"{prefix}{s.domain_type}-{s.stem_tail}"
    return out


def _generic(reason: str) -> str:
    """A failure's reason without what differs between otherwise equal deaths (pids, sizes)."""
    reason = re.sub(r"Killed process \d+ (\([^)]*\))[^;]*", r"Killed process \1", reason)
    return reason


def _sortable(value) -> tuple:
    return (str(type(value)), value if value is not None else 0)


def _kernel_label(release: str | None) -> str:
    return f"Linux {release}" if release else ""
