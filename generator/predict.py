"""Before setting `memory`: what a guest will see once ballooned, where the rest goes, and whether it
survives its balloon, from the committed records (no boot).

For one guest of the committed experiments on one hypervisor, each measured `memory` size gives
(medians of its repeats):

- the set-aside: memory minus MemTotal at boot, and its items where the records are itemized;
- `used`: what the guest had in use at boot (MemTotal minus the free pages of its zones), which it
  still needs once ballooned;
- `reserve`: the free memory the page allocator keeps from an ordinary (movable) allocation: each
  zone's min watermark plus, for the zones below the one such allocations start from, its
  `protection` against them, each capped at the zone's size (all sized for `memory` at boot).

Between measured sizes each quantity is interpolated linearly, outside them extended from the two
nearest sizes (and said). The survival condition, checked against every committed outcome by
`check_outcomes`:

    margin = currentMemory - set-aside - used - reserve   (MiB);   the guest survives if margin >= 0

A balloon with autodeflate gives memory back before the guest runs out: it survives regardless. A
Xen PV guest does not inflate a balloon at boot (it is built with currentMemory): the condition is
not about it.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field

from . import hypervisors
from . import laws as L
from .manifest import at_defaults
from .guests import setaside
from .kinds import kind_of_record
from .errors import UserError
from .model import along, family
from .results import as_record
from .units import mib_label

FORMAT, VERSION = "memballoon-predict", 1
BORDERLINE_MIB = 8.0  # a margin this close to 0 is within what repeats of one point differ by


def _plain(r: dict) -> bool:
    r = as_record(r)
    return at_defaults(r)


def reserve_kib(zone_reserves: dict | None) -> float | None:
    """The free memory kept from a movable allocation, per NUMA node (zones 'Normal@1' are node 1's):
    min watermarks, plus the lower zones' protection against the node's highest populated zone
    (capped at each zone's size), summed over the nodes."""
    zones = (zone_reserves or {}).get("zones") or {}
    order = ["DMA", "DMA32", "Normal", "Movable"]
    nodes: dict[str, dict] = {}
    for name, z in zones.items():
        zone, _, node = name.partition("@")
        if zone in order:
            nodes.setdefault(node or "0", {})[zone] = z
    if not nodes:
        return None
    total = 0.0
    for own in nodes.values():
        present = [z for z in order if z in own]
        top = order.index(present[-1])
        for name in present:
            z = own[name]
            protection = z.get("protection") or []
            guard = protection[top] if top < len(protection) else 0
            total += min(z.get("managed", 0), z.get("min", 0) + (guard if order.index(name) < top else 0))
    return total


def used_kib(record: dict) -> float | None:
    """MemTotal minus the zones' free pages when the zones were read: what the guest had in use at
    boot, before the balloon (the probe), or once settled (a full system, read when it can log in)."""
    record = as_record(record)
    reserves = record.zone_reserves or {}
    zones = reserves.get("zones") or {}
    boot = record.memtotal_settled_kib if reserves.get("read") == "settled" else record.memtotal_boot_kib
    free = [z.get("free") for z in zones.values()]
    if not boot or not free or any(f is None for f in free):
        return None
    return boot - sum(free)


def margin_mib(record: dict) -> float | None:
    """The survival margin of one record, from its own readings (None where it cannot be stated)."""
    record = as_record(record)
    boot, reserve, used = record.memtotal_boot_kib, reserve_kib(record.zone_reserves), used_kib(record)
    if not boot or reserve is None or used is None:
        return None
    if inflates(record):  # it boots with all of memory, then the balloon takes it down to currentMemory
        left = record.current_memory_mib * 1024 - (record.memory_mib * 1024 - boot)
    else:  # built with currentMemory (Xen PV) or nothing plugged yet (hotplug): MemTotal at boot is it
        left = boot
    return (left - used - reserve) / 1024


def inflates(record: dict) -> bool:
    """Whether the guest boots with all of memory and a balloon takes it down to currentMemory."""
    record = as_record(record)
    return (hypervisors.for_domain_type(record.domain_type or "").inflates_after_boot
            and (record.memory_model or "balloon") == "balloon")


# --- one guest's measured sizes -------------------------------------------------------------------
@dataclass
class Size:
    memory_mib: int
    set_aside_mib: float
    used_mib: float | None
    reserve_mib: float | None
    items: dict = field(default_factory=dict)  # item -> MiB


def sizes_of(records: list[dict], inflates_after_boot: bool = True) -> list[Size]:
    """Per measured size, medians of its records. Where the guest boots with all of memory, the
    set-aside is memory minus MemTotal at boot (every record that booted has it, deaths too); a guest
    built with currentMemory (Xen PV) has what it lost once ballooned instead."""
    records = [as_record(r) for r in records]
    by: dict[int, list[dict]] = {}
    for r in records:
        if inflates_after_boot and isinstance(r.memtotal_boot_kib, int):
            by.setdefault(r.memory_mib, []).append(r)
        elif not inflates_after_boot and r.status == "ok" and isinstance(r.memtotal_settled_kib, int):
            by.setdefault(r.memory_mib, []).append(r)
    out = []
    for m, rs in sorted(by.items()):
        set_aside = statistics.median((m - r.memtotal_boot_kib / 1024) if inflates_after_boot else
                                      (r.current_memory_mib - r.memtotal_settled_kib / 1024) for r in rs)
        used = [u / 1024 for r in rs if (u := used_kib(r)) is not None]
        reserve = [v / 1024 for r in rs if (v := reserve_kib(r.zone_reserves)) is not None]
        itemized = [r.set_aside_kib for r in rs if isinstance(r.set_aside_kib, dict)]
        items = {}
        for name in sorted({k for d in itemized for k in d}):
            items[name] = statistics.median(d.get(name, 0) for d in itemized) / 1024
        out.append(Size(m, set_aside, statistics.median(used) if used else None,
                        statistics.median(reserve) if reserve else None, items))
    return out


@dataclass
class Prediction:
    guest: str
    experiment: str
    hypervisor: str
    kernel: str
    memory_mib: int
    current_memory_mib: int
    sees_mib: float
    set_aside_mib: float
    how: str                                   # measured | from the kernel's rules | interpolated | extrapolated …
    items: dict = field(default_factory=dict)  # item -> {"mib", "per_gib", "rule"}
    used_mib: float | None = None
    reserve_mib: float | None = None
    margin_mib: float | None = None
    survives: bool | None = None
    condition: str = ""
    need_mib: float | None = None
    spare_mib: float | None = None
    largest_memory_mib: int | None = None
    largest_is_bound: bool = False             # the search stopped at its cap: at least this much
    measured_sizes: list = field(default_factory=list)
    domain_type: str = ""                      # kvm | qemu (TCG) | xen: whose records and laws answered
    basis: str = ""                            # what the answer rests on, in words
    used_by: str = ""                          # whose use at boot: the probe's busybox, or a full system
    records_read: str = ""                     # which records were read (committed or not)

    def lines(self) -> list[str]:
        sees = f"{self.sees_mib:,.0f} MiB of {self.current_memory_mib:,}" if self.sees_mib > 0 else "nothing"
        out = [f"{self.guest} ({self.experiment}, kernel {self.kernel or 'unknown'}) on {self.hypervisor}: "
               f"memory {mib_label(self.memory_mib)}, currentMemory {mib_label(self.current_memory_mib)}"]
        if self.records_read:
            out.append(f"  from {self.records_read}")
        out += [f"  sees after ballooning: {sees} "
                f"({self.how}; measured at {', '.join(mib_label(m) for m in self.measured_sizes)})",
                f"  set aside for all of memory: {self.set_aside_mib:,.0f} MiB" +
                (f" ({self.basis})" if self.basis else "")]
        for name, v in sorted(self.items.items(), key=lambda kv: -kv[1]["mib"]):
            rule = v.get("rule") or (f"{v['per_gib'] + 0.0:+.2f} MiB per GiB of memory"
                                     if v.get("per_gib") is not None else "")
            out.append(f"    {name:<32} {v['mib']:>9,.1f} MiB" + (f"   {rule}" if rule else ""))
        if self.survives is None or self.reserve_mib is None:
            out.append(f"  survives its balloon: {'no: ' if self.survives is False else ''}{self.condition}")
        else:
            out.append(f"  left for your work: {self.margin_mib:,.0f} MiB (sees {self.sees_mib:,.0f} - in use "
                       f"{self.used_mib:,.0f} {self.used_by or 'at boot, by the probe'} - allocator reserve "
                       f"{self.reserve_mib:,.0f})")
            verdict = ("yes (what is left is not negative)" if self.survives else
                       "NO: it runs out of memory while the balloon inflates")
            out.append(f"  survives its balloon: {verdict}")
            if self.margin_mib is not None and abs(self.margin_mib) < BORDERLINE_MIB:
                out.append(f"  borderline: within {BORDERLINE_MIB:g} MiB of the condition, where repeats of one "
                           "point have gone both ways")
        if self.need_mib is not None and self.spare_mib is not None:
            out.append(f"  with {self.need_mib:,.0f} MiB needed by your work: "
                       + (f"{self.spare_mib:,.0f} MiB more than that is left" if self.spare_mib >= 0 else
                          f"{-self.spare_mib:,.0f} MiB short"))
        if self.largest_memory_mib is not None:
            what = (f"that leaves {self.need_mib:,.0f} MiB for your work" if self.need_mib
                    else "at which it survives its balloon")
            out.append(f"  the largest memory {what}: {'at least ' if self.largest_is_bound else ''}"
                       f"{self.largest_memory_mib / 1024:,.1f} GiB ({self.largest_memory_mib:,} MiB)")
        elif self.need_mib is not None and self.survives is not None:
            out.append(f"  no memory of {mib_label(self.current_memory_mib)} or more leaves {self.need_mib:,.0f} MiB")
        return out


def choose(records: list[dict], guest: str, experiment: str | None, hypervisor: str | None) -> tuple[list[dict], str, str]:
    """The records of one guest on one domain type (plain balloon), with clear lines for what is not
    there. `hypervisor` is a domain type (kvm, qemu for TCG, xen) or a family (qemu: KVM or TCG)."""
    records = [as_record(r) for r in records]
    known = sorted({r.guest for r in records})
    mine = [r for r in records if r.guest == guest and _plain(r)]
    if not mine:
        raise UserError(f"--guest {guest!r}: no committed records of that guest; guests measured: {', '.join(known)}")
    if experiment:
        exps = sorted({(r.experiment or "") for r in mine})
        mine = [r for r in mine if r.experiment == experiment]
        if not mine:
            raise UserError(f"--experiment {experiment!r}: guest {guest!r} was measured in {', '.join(exps)}")
    types = sorted({r.domain_type or "" for r in mine})
    if hypervisor:
        wanted = [t for t in types if t == hypervisor] or [t for t in types if family(t) == hypervisor]
        if not wanted:
            raise UserError(f"--hypervisor {hypervisor!r}: guest {guest!r} was measured on "
                            f"{', '.join(hypervisors.label(t) for t in types)} ({', '.join(types)})")
        types = wanted
    # the domain type with the most records: TCG here, KVM where it ran more often
    counts = {t: sum(1 for r in mine if r.domain_type == t) for t in types}
    dtype = max(sorted(types), key=lambda t: (counts[t], hypervisors.for_domain_type(t).inflates_after_boot))
    mine = [r for r in mine if r.domain_type == dtype]
    # the experiment with the most sizes, when several measured this guest
    by_exp: dict[str, set] = {}
    for r in mine:
        by_exp.setdefault((r.experiment or ""), set()).add(r.memory_mib)
    exp = experiment or max(sorted(by_exp), key=lambda e: len(by_exp[e]))
    return [r for r in mine if (r.experiment or "") == exp], dtype, exp


# Debian's suites by the name a reader may know them by: their release's number
DEBIAN_SUITES = {"buster": "debian 10", "bullseye": "debian 11", "bookworm": "debian 12", "trixie": "debian 13",
                 "forky": "debian 14"}


def resolve_guest(records: list[dict], labels: dict[str, str], asked: str) -> str:
    """The guest a reader means: a manifest's short name ('debian'), how the posts name it ('Debian 12',
    'Debian 12 kernel 6.1'), a Debian suite ('bookworm'), or its kernel's release or series
    ('6.1.0-57-amd64', '6.1'). One clear line,
    listing the guests by those names, when nothing or more than one matches."""
    records = [as_record(r) for r in records]
    usable = {}  # name -> its kernels, for guests predict can answer for (booted, plain balloon)
    for r in records:
        if _plain(r) and isinstance(r.memtotal_boot_kib, int) and (kind_of_record(r).bare
                                                                   or isinstance(r.set_aside_kib, dict)):
            usable.setdefault(r.guest, set()).add(r.guest_kernel or "")
    want = " ".join(asked.split()).lower()
    want = DEBIAN_SUITES.get(want.removeprefix("debian:"), want)  # 'bookworm' is 'debian 12'

    def names(g: str) -> list[str]:
        label = labels.get(g, g)
        kernels = sorted(usable[g])
        return [g.lower(), label.lower(), *[k.lower() for k in kernels], *[L.series_of(k) for k in kernels]]
    exact = [g for g in usable if want in names(g)]
    prefix = [g for g in usable if labels.get(g, g).lower().startswith(want + " ")] if not exact else []
    found = exact or prefix
    if len(found) == 1:
        return found[0]
    listing = "; ".join(f"{labels.get(g, g)} ({g}, kernel {', '.join(sorted(usable[g]))})" for g in sorted(usable))
    if not found:
        raise UserError(f"--guest {asked!r}: no records of such a guest; guests measured: {listing}")
    raise UserError(f"--guest {asked!r} names several guests: "
                    + "; ".join(f"{labels.get(g, g)} ({g})" for g in sorted(found)) + "; give one of their names")


def _rule(name: str, laws: L.Laws) -> str:
    """How an item grows, in the words of its law."""
    if name == setaside.PAGE_DESCRIPTORS:
        return f"{16 + laws.page_descriptors[1] / 1024:.2f} MiB per GiB (64 B per 4 KiB page)"
    if name == setaside.HASH_TABLES:
        return "doubles at each power of two (1.5 MiB per GiB there)"
    if name == setaside.BOUNCE_BUFFER:
        return (f"a step of {laws.bounce_kib / 1024:.1f} MiB once RAM may lie above 4 GiB" if laws.bounce_kib
                else "none on this hypervisor")
    if name == setaside.PAGE_TABLES:
        return f"{laws.page_tables[1]:+.1f} KiB per GiB"
    if name == setaside.FIRMWARE:
        return "constant (plus memory not present at boot)"
    return "constant"


def predict(records: list[dict], guest: str, memory_mib: int, current_mib: int, need_mib: float | None = None,
            experiment: str | None = None, hypervisor: str | None = None) -> Prediction:
    records = [as_record(r) for r in records]
    if memory_mib <= 0 or current_mib <= 0:
        raise UserError("--memory and --current-memory must be above 0")
    if current_mib > memory_mib:
        raise UserError(f"--current-memory {mib_label(current_mib)} is above --memory {mib_label(memory_mib)}: "
                        "the balloon's target cannot exceed the ceiling")
    if need_mib is not None and need_mib < 0:
        raise UserError("--need must not be negative")
    mine, dtype, exp = choose(records, guest, experiment, hypervisor)
    hv = hypervisors.for_domain_type(dtype)
    sizes = sizes_of(mine, hv.inflates_after_boot)
    if not sizes:
        raise UserError(f"--guest {guest!r}: no record of it on {hypervisors.label(dtype)} can be used (" +
                        ("none booted and reported MemTotal at boot)" if hv.inflates_after_boot else
                         "none settled with a MemTotal to compare)"))
    kernels = sorted({r.guest_kernel or "" for r in mine})
    kernel = kernels[-1] if kernels else ""
    # the laws' constants from every record of this kernel on this domain type, whatever the experiment
    same_series = len({L.series_of(k) for k in kernels}) == 1
    laws = L.fit(records, dtype, tuple(kernels)) if same_series and hv.inflates_after_boot else None
    guest_of = L.guest_of(memory_mib, current_mib, "balloon", dtype)
    measured_here = next((s for s in sizes if s.memory_mib == memory_mib), None)
    if laws is not None:
        set_aside = measured_here.set_aside_mib if measured_here else laws.set_aside_kib(guest_of) / 1024
        how = "measured" if measured_here else "from the kernel's rules (not measured at this size)"
        basis = (f"the kernel's sizing rules, fitted to {laws.records} itemized boots of kernel "
                 f"{', '.join(kernels)}")
    else:
        set_aside, how = along([(s.memory_mib, s.set_aside_mib) for s in sizes], memory_mib)
        basis = "interpolated between the measured sizes: no itemized records to fit the kernel's rules to"
    p = Prediction(guest, exp, hypervisors.label(dtype), ", ".join(k for k in kernels if k), memory_mib, current_mib,
                   round(current_mib - set_aside, 1), round(set_aside, 1), how,
                   measured_sizes=[s.memory_mib for s in sizes], need_mib=need_mib, domain_type=dtype, basis=basis,
                   used_by=("by the full system once settled (systemd, its services, the guest agent)"
                            if not all(kind_of_record(r).bare for r in mine) else "at boot, by the probe's busybox init"))
    if laws is not None:
        for name, kib in laws.items(guest_of).items():
            if kib:
                p.items[name] = {"mib": round(kib / 1024, 1), "per_gib": None, "rule": _rule(name, laws)}
        p.items[setaside.PAGE_DESCRIPTORS]["per_gib"] = round(16 + laws.page_descriptors[1] / 1024, 2)
    else:
        itemized = [s for s in sizes if s.items]
        for name in sorted({k for s in itemized for k in s.items}):
            value, _ = along([(s.memory_mib, s.items.get(name, 0.0)) for s in itemized], memory_mib)
            p.items[name] = {"mib": round(value, 1), "per_gib": None, "rule": "interpolated"}
    if not hv.inflates_after_boot:
        p.condition = (f"not stated for {hv.title}: its guests are built with currentMemory and inflate no balloon "
                       "at boot")
        return p
    if p.sees_mib <= 0:
        p.survives = False
        p.condition = (f"nothing is left: the set-aside ({p.set_aside_mib:,.0f} MiB) is more than currentMemory "
                       f"({current_mib:,} MiB)")
        return p
    margin = _margin_function(records, laws, sizes, kernels, dtype, current_mib)
    if margin is None:
        p.condition = ("unknown: the records of this guest were measured before the zone reserves were recorded "
                       "(re-measure them: make report)")
        return p
    return _judged(p, margin)


def _judged(p: Prediction, margin) -> Prediction:
    """A prediction completed by its margin function: what is left, survival, spare and the largest memory."""
    p.margin_mib, _, p.used_mib, p.reserve_mib = (round(v, 1) for v in margin(p.memory_mib))
    p.survives = p.margin_mib >= 0
    if p.need_mib is not None:
        p.spare_mib = round(p.margin_mib - p.need_mib, 1)
    p.largest_memory_mib, p.largest_is_bound = largest_memory(margin, p.current_memory_mib, p.need_mib or 0.0)
    return p


def _margin_function(records, laws: L.Laws | None, sizes: list[Size], kernels: list[str], dtype: str,
                     current_mib: int):
    """margin(memory) -> (margin, set-aside, in use at boot, reserve) in MiB: from the laws where they have
    the zones and the use at boot, else interpolated between the sizes measured with zone reserves."""
    if laws is not None and laws.dma_managed_kib is not None and laws.dma32_managed_kib is not None and laws.used:
        def by_law(m: float) -> tuple[float, float, float, float]:
            g = L.guest_of(int(m), current_mib, "balloon", dtype)
            sa = laws.set_aside_kib(g) / 1024
            used = laws.used_kib(g)[0] / 1024
            reserve = laws.reserve_kib(g) / 1024
            return current_mib - sa - used - reserve, sa, used, reserve
        return by_law
    same_kernel = [r for r in records if _plain(r) and r.guest_kernel in kernels and r.domain_type == dtype
                   and r.zone_reserves]
    with_reserve = [s for s in sizes_of(same_kernel) if s.reserve_mib is not None and s.used_mib is not None]
    if not with_reserve:
        return None

    def interpolated(m: float) -> tuple[float, float, float, float]:
        sa = along([(s.memory_mib, s.set_aside_mib) for s in sizes], m)[0]
        used = along([(s.memory_mib, s.used_mib) for s in with_reserve], m)[0]
        reserve = along([(s.memory_mib, s.reserve_mib) for s in with_reserve], m)[0]
        return current_mib - sa - used - reserve, sa, used, reserve
    return interpolated


def largest_memory(margin, current_mib: int, want: float) -> tuple[int | None, bool]:
    """The largest memory (MiB) whose margin leaves `want`, and whether the search hit its cap; every
    part of the margin grows with memory, so it only falls."""
    cap = 1 << 24  # 16 TiB: beyond any guest measured here
    if current_mib > cap or margin(current_mib)[0] < want:
        return None, False
    if margin(cap)[0] >= want:
        return cap, True
    lo, hi = current_mib, cap
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if margin(mid)[0] >= want else (lo, mid)
    return lo, False


SIZING_CURRENT = (512, 768, 1024, 1536, 2048, 4096)


def sizing_table(records: list[dict], need_mib: float = 300.0, currents=SIZING_CURRENT) -> list[dict]:
    """For each kernel and domain type with itemized records: per currentMemory, the largest memory at
    which a ballooned guest survives its balloon and the largest that leaves `need_mib` for its work
    (in use at boot as the probe had it)."""
    records = [as_record(r) for r in records]
    out = []
    for (dtype, series), laws in sorted(L.all_laws(records).items()):
        kernel = laws.kernel
        if not hypervisors.for_domain_type(dtype).inflates_after_boot or laws.dma32_managed_kib is None:
            continue
        row = {"domain_type": dtype, "hypervisor": hypervisors.label(dtype), "kernel": kernel,
               "per_gib": round(L.marginal_per_gib(laws), 2), "bounce_mib": round(laws.bounce_kib / 1024, 1),
               "sizes": []}
        for c in currents:
            margin = _margin_function(records, laws, [], [], dtype, c)
            survives, _ = largest_memory(margin, c, 0.0)
            leaves, _ = largest_memory(margin, c, need_mib)
            row["sizes"].append({"current_memory_mib": c, "survives_to_mib": survives, "leaves_need_to_mib": leaves})
        out.append(row)
    return out


def check_outcomes(records: list[dict]) -> dict:
    """The condition against every committed outcome that can be judged: each record's own margin
    (its set-aside, use and reserves) against whether it lived. Guests built with currentMemory (Xen
    PV, virtio-mem and DIMM hotplug) are judged on what they boot with. Not judged, and counted as
    such: ballooned autodeflate guests (their balloon gives pages back instead of holding its target, so
    the condition does not apply to them) and records without zone reserves."""
    records = [as_record(r) for r in records]
    judged, hits, misses, borderline, not_judged = 0, 0, [], [], 0
    not_judged_why: dict[str, int] = {}
    built_with_current = 0
    for r in records:
        if r.status not in ("ok", "oom", "panic"):
            continue
        if r.autodeflate and inflates(r):  # a hotplug guest inflates nothing: autodeflate changes nothing there
            not_judged += 1
            why = "ballooned autodeflate boots, whose balloon gives pages back instead of holding its target"
            not_judged_why[why] = not_judged_why.get(why, 0) + 1
            continue
        m = margin_mib(r)
        if m is None:  # no zone reserves (measured before they were read, or dead before they could be)
            not_judged += 1
            died_unread = r.status != "ok" and isinstance(r.set_aside_kib, dict) and not any(
                "itemized when read" in n for n in r.set_aside_notes or [])
            why = ("boots that died before their zones could be read" if died_unread
                   else "boots measured before the reserves were recorded")
            not_judged_why[why] = not_judged_why.get(why, 0) + 1
            continue
        predicted = m >= 0
        lived = r.status == "ok"
        judged += 1
        built_with_current += not inflates(r)
        where = (f"{r.get('experiment')}/{r.host}/{r.guest} memory {mib_label(r.memory_mib)}, currentMemory "
                 f"{mib_label(r.current_memory_mib)}, repeat {r.repeat}")
        if predicted == lived:
            hits += 1
        else:   # `record`: which record it is, for a page that states the margin (a claim)
            (borderline if abs(m) < BORDERLINE_MIB else misses).append(
                {"point": where, "margin_mib": round(m, 1), "status": r.status, "record": r})
    return {"judged": judged, "predicted": hits, "borderline": borderline, "missed": misses, "not_judged": not_judged,
            "not_judged_why": dict(sorted(not_judged_why.items())), "built_with_current": built_with_current}


def as_json(p: Prediction) -> str:
    return json.dumps({"format": FORMAT, "version": VERSION, **asdict(p)}, indent=1) + "\n"


def predict_shipped(doc: dict, asked: str, memory_mib: int, current_mib: int, need_mib: float | None = None,
                    hypervisor: str | None = None) -> Prediction:
    """predict without records: from the rules shipped inside the package (laws.export of the project's
    records when it was built). For a guest a reader names as the posts do, or by kernel."""
    if current_mib > memory_mib or memory_mib <= 0 or current_mib <= 0:
        raise UserError(f"--current-memory {mib_label(current_mib)} must be above 0 and at most --memory "
                        f"{mib_label(memory_mib)}")
    want = " ".join(asked.split()).lower()
    entries = [e for e in doc.get("laws", []) if not hypervisor or hypervisor in
               (e["domain_type"], family(e["domain_type"]))]

    def names(e: dict) -> list[str]:
        return ([g["name"].lower() for g in e["guests"]] + [g["label"].lower() for g in e["guests"]]
                + [k.lower() for k in e["kernels"]] + [e["series"]])
    found = [e for e in entries if want in names(e)] or \
        [e for e in entries if any(g["label"].lower().startswith(want + " ") for g in e["guests"])]
    if not found:
        listing = "; ".join(sorted({f"{g['label']} ({g['name']}, kernel {', '.join(e['kernels'])})"
                                    for e in entries for g in e["guests"]}))
        raise UserError(f"--guest {asked!r}: no rules shipped for such a guest; guests measured: {listing}")
    entry = max(found, key=lambda e: (e["laws"]["records"], e["domain_type"]))
    laws = L.laws_of(entry["laws"])
    dtype = entry["domain_type"]
    g = L.guest_of(memory_mib, current_mib, "balloon", dtype)
    set_aside = laws.set_aside_kib(g) / 1024
    measured = memory_mib in entry["measured_sizes"]
    p = Prediction(entry["guests"][0]["name"], "the rules shipped with this package", hypervisors.label(dtype),
                   ", ".join(entry["kernels"]), memory_mib, current_mib, round(current_mib - set_aside, 1),
                   round(set_aside, 1), "from the kernel's rules" + (" (a size that was measured)" if measured else
                                                                     " (not measured at this size)"),
                   measured_sizes=list(entry["measured_sizes"]), need_mib=need_mib, domain_type=dtype,
                   basis=f"the kernel's sizing rules, fitted to {laws.records} itemized boots",
                   used_by="at boot, by the probe's busybox init")
    for name, kib in laws.items(g).items():
        if kib:
            p.items[name] = {"mib": round(kib / 1024, 1), "per_gib": None, "rule": _rule(name, laws)}
    if p.sees_mib <= 0:
        p.survives = False
        p.condition = (f"nothing is left: the set-aside ({p.set_aside_mib:,.0f} MiB) is more than currentMemory "
                       f"({current_mib:,} MiB)")
        return p
    margin = _margin_function([], laws, [], [], dtype, current_mib)
    if margin is None:
        p.condition = "unknown: the shipped rules have no zone reserves for this kernel"
        return p
    return _judged(p, margin)
