"""From result records to what the post says: series, numbers, a fitted line, an explanation.

Pure Python (no matplotlib, no numpy) so that a no-op build never pays for importing them.
"""
from __future__ import annotations

import dataclasses
import re
import statistics

from .. import hypervisors, laws
from ..results import as_record
from .claims import claimed, fact, leaf, size
from ..kinds import kind_of_record
from .series import IDENTITY, PAGE_SIZE, STRUCT_PAGE, RecordQueries, Series, _generic, point_where


def _dtype(record) -> str:
    return hypervisors.domain_type_of(record.domain_type)


def _dtype_where(domain_type: str):
    """The claims' selection of a domain type, with the old records that name none where they are its."""
    return [domain_type, None] if hypervisors.domain_type_of(None) == domain_type else domain_type


def _spread(boots: list, where: dict) -> dict | None:
    """How far boots of one point differ among themselves (max - min, KiB): what the guest saw once settled,
    and each item of the set-aside; None with fewer than two boots that give them (claims)."""
    seen = [r.memtotal_settled_kib for r in boots if isinstance(r.memtotal_settled_kib, int)]
    sets = [r.set_aside_kib for r in boots if isinstance(r.set_aside_kib, dict)]
    if len(seen) < 2:
        return None
    out = {"seen_kib": claimed(max(seen), leaf("field:memtotal_settled_kib", where, "max"))
           - claimed(min(seen), leaf("field:memtotal_settled_kib", where, "min")), "items": {}}
    if len(sets) >= 2:
        for name in sorted(set().union(*sets)):
            vals = [d.get(name, 0) for d in sets]
            out["items"][name] = (claimed(max(vals), leaf(f"item_kib:{name}", where, "max"))
                                  - claimed(min(vals), leaf(f"item_kib:{name}", where, "min")))
    return out


class Data(RecordQueries):
    """What a post's Jinja template sees as `data`: the series and numbers worth quoting."""

    def __init__(self, records: list[dict], series: list[Series], planned: int, guest_order: list[str] = (),
                 host_order: list[str] = (), scope: dict | None = None):
        self.records = [as_record(r) for r in records]
        self.series = series
        self.planned = planned
        self.guest_order = list(guest_order)
        self.host_order = list(host_order)
        self.scope = dict(scope or {})   # what every record here shares beyond their own fields (claims)

    def by_hypervisor(self) -> list[Data]:
        """The same questions asked per hypervisor (domain type), in the posts' order: one Data each,
        its claims selecting that domain type; [self] alone when the records hold one."""
        types = sorted({_dtype(r) for r in self.records}, key=hypervisors.rank)
        if len(types) <= 1:
            return [self]
        def type_of(s: Series) -> set[str]:   # by its records: a series of old records is 'unknown' itself
            return {_dtype(r) for p in s.points for r in p.records}
        return [Data([r for r in self.records if _dtype(r) == dt], [s for s in self.series if type_of(s) == {dt}],
                     planned=self.planned, guest_order=self.guest_order, host_order=self.host_order,
                     scope={**self.scope, "domain_type": _dtype_where(dt)}) for dt in types]

    def outcomes_at(self, memory_mib: int) -> dict[int, bool]:
        """At one `memory`: each `currentMemory` tried, and whether its guest lived (True) or its balloon
        killed it (False); targets whose boots ended otherwise (refused, timed out) are left out."""
        out: dict[int, bool] = {}
        for s in self.series:
            p = s.at(memory_mib)
            if p is None:
                continue
            if p.ok:
                out[s.current_memory_mib] = True
            elif any(r.status in ("oom", "panic") for r in p.records):
                out.setdefault(s.current_memory_mib, False)
        return out

    def lines_compared(self) -> dict | None:
        """Between the hypervisors of `by_hypervisor()` (None unless several): the sizes at which all of them
        tried the same targets, split into those where the same targets lived and died (`same`) and those
        where they did not (`apart`). Sizes where their targets differ are in neither."""
        parts = self.by_hypervisor()
        if len(parts) < 2:
            return None
        same, apart = [], []
        for v in self.memory_values:
            seen = [d.outcomes_at(v) for d in parts]
            if any(not o for o in seen) or any(set(o) != set(seen[0]) for o in seen):
                continue
            (same if all(o == seen[0] for o in seen) else apart).append(v)
        return {"same": same, "apart": apart}

    @property
    def hypervisor(self) -> str:
        """The hypervisor these records were measured on, as posts name it ('' if several)."""
        types = {_dtype(r) for r in self.records}
        return hypervisors.label(types.pop()) if len(types) == 1 else ""

    @property
    def has_data(self) -> bool:
        return any(s.measured for s in self.series)

    @property
    def main(self) -> Series | None:
        """The series the prose talks about: the manifest's first host and first guest, as long as it
        measured a line (two points or more); otherwise the next in manifest order that did, else the
        one with most measured points. Failed points at the large end don't demote a series: they are
        part of what the prose tells."""
        def rank(s: Series) -> tuple:
            order = self.guest_order.index(s.guest) if s.guest in self.guest_order else len(self.guest_order)
            host = self.host_order.index(s.host) if s.host in self.host_order else len(self.host_order)
            return (len(s.measured) < 2, host, order, -len(s.measured))
        return min(self.series, key=rank, default=None)

    def on(self, domain_type: str) -> list[Series]:
        """The series measured on one hypervisor ('qemu', 'kvm', 'xen'), in the manifest's guest order."""
        order = {g: i for i, g in enumerate(self.guest_order)}
        return sorted((s for s in self.series if s.domain_type == domain_type and s.measured),
                      key=lambda s: (order.get(s.guest, len(order)), s.host))

    @property
    def systems(self) -> list[Series]:
        return [s for s in self.series if s.is_system and (s.measured or s.failed)]

    @property
    def hypervisors(self) -> list[str]:
        return sorted({s.domain_type for s in self.series if s.measured})

    @property
    def comparisons(self) -> list[dict]:
        """Per guest (and currentMemory, variant): its series on each hypervisor, where there are several."""
        groups: dict[tuple, list[Series]] = {}
        for s in self.series:
            if s.measured:
                groups.setdefault((s.guest, tuple(sorted(s.factors.items()))), []).append(s)
        order = {g: i for i, g in enumerate(self.guest_order)}
        out = []
        for (guest, _), members in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], len(order)), kv[0])):
            if len({s.domain_type for s in members}) > 1:
                members.sort(key=lambda s: hypervisors.rank(s.domain_type))
                out.append({"guest": guest, "label": members[0].guest_label, "series": members,
                            "key": f"compare/{guest}/" + members[0].key.split("/", 2)[2],
                            "stem": f"compare-{members[0].stem_tail}",
                            "title": f"{' and '.join(s.hypervisor for s in members)}, {members[0].guest_label}, "
                                     f"currentMemory {members[0].current_memory_mib} MiB"})
        return out

    @property
    def failures(self) -> list[dict]:
        return [r for r in self.records if r.status != "ok"]

    @property
    def failure_groups(self) -> list[dict]:
        """Failures with the same memory, currentMemory, status and reason, told once with where/how often."""
        groups: dict[tuple, dict] = {}
        for r in sorted(self.failures, key=lambda r: (r.memory_mib, r.current_memory_mib, r.host, r.guest)):
            key = (r.memory_mib, r.current_memory_mib, r.status, _generic(r.reason or ""))
            g = groups.setdefault(key, {"memory_mib": size(key[0]), "current_memory_mib": size(key[1]), "status": key[2],
                                        "reason": key[3], "count": 0, "where": {}})
            g["count"] += 1
            where = f"{r['host']}/{r['guest']}"
            g["where"][where] = g["where"].get(where, 0) + 1
        for g in groups.values():
            g["where"] = [f"{w} (×{n})" if n > 1 else w for w, n in g["where"].items()]
        return list(groups.values())

    @property
    def where(self) -> dict:
        return {**point_where(self.records), **self.scope}

    @property
    def max_repeats(self) -> int:
        return claimed(max((len(p.seen) for s in self.series for p in s.points), default=0),
                       leaf("seen_mib", {**self.where, "status": "ok"}, "most_per_point"))

    @property
    def max_spread(self) -> int:
        """The largest difference between repeats of one point (MiB)."""
        return claimed(max((p.spread[1] - p.spread[0] for s in self.series for p in s.measured), default=0),
                       leaf("seen_mib", {**self.where, "status": "ok"}, "widest_per_point"))


    def distinct(self, key: str) -> int:
        """How many different values of a record field the records hold."""
        return claimed(len(self.versions(key)), leaf(f"field:{key}", self.where, "distinct"))

    @property
    def memory_values(self) -> list[int]:
        return [size(m) for m in sorted({r.memory_mib for r in self.records})]

    @property
    def memfd_from(self) -> int | None:
        """The smallest memory whose guest RAM was a memfd (larger than the host could commit)."""
        found = min((r.memory_mib for r in self.records if r.memory_backing == "memfd"), default=None)
        return None if found is None else size(found)

    def plugged(self) -> list[dict]:
        """Points whose guest had memory plugged once it ran (plugging.py), smallest first per model: KiB
        plugged; MemTotal before, plugged and after the unplug; MemFree before and plugged; seconds the
        plug and the unplug took (medians over the repeats that finished both, each a claim)."""
        out = []
        for s in self.series:
            plugged = s.factors.get("plugged_mib")
            if not plugged:
                continue
            for p in s.measured:
                done = [r for r in p.ok if isinstance(r.plug, dict) and "unplug_s" in r.plug]
                if not done:
                    continue
                where = {**p.where, "status": "ok"}

                def median(key: str):
                    return claimed(statistics.median(r.plug[key] for r in done), leaf(f"plug:{key}", where))
                out.append({"model": s.factors.get("memory_model"), "plugged_mib": size(plugged),
                            "memory_mib": p.memory_mib, "current_mib": size(s.current_memory_mib),
                            **{key: median(key) for key in ("memtotal_before_kib", "memtotal_plugged_kib",
                                                            "memtotal_unplugged_kib", "memfree_before_kib",
                                                            "memfree_plugged_kib", "memfree_unplugged_kib",
                                                            "plug_s", "unplug_s")}})
                row = out[-1]
                row["grew_mib"] = (row["memtotal_plugged_kib"] - row["memtotal_before_kib"]) / 1024
                row["freed_mib"] = (row["memfree_plugged_kib"] - row["memfree_before_kib"]) / 1024
                row["cost_mib"] = row["plugged_mib"] - row["freed_mib"]
                row["exact"] = row["grew_mib"] == plugged and row["memtotal_unplugged_kib"] == row["memtotal_before_kib"]
        return sorted(out, key=lambda row: (row["model"], row["plugged_mib"]))

    def sizing(self, need_mib: float = 300.0, domain_type: str | None = None) -> list[dict]:
        """predict's sizing table from this post's records: per kernel and domain type with itemized boots,
        how far memory can go for each currentMemory (predict.sizing_table), labelled as the post names
        the guest ('Debian 12 kernel 6.1', and the hypervisor where there are several)."""
        from ..predict import sizing_table

        rows = [r for r in sizing_table(self.records, need_mib) if domain_type in (None, r["domain_type"])]
        for row in rows:
            asked = {"need_mib": need_mib, "domain_type": row["domain_type"], "kernel": row["kernel"]}
            for z in row["sizes"]:
                c = z["current_memory_mib"]
                for key in ("survives_to_mib", "leaves_need_to_mib"):
                    z[key] = claimed(z[key], {"sizing": asked, "current": c, "field": key, "where": self.where})
                z["current_memory_mib"] = fact(c, "predict.SIZING_CURRENT: the currentMemory sizes the table asks about")
        several = len({r["domain_type"] for r in rows}) > 1
        order = {g: i for i, g in enumerate(self.guest_order)}
        for row in rows:
            owner = next((s for s in self.series if s.domain_type == row["domain_type"] and not s.is_system
                          and laws.series_of(row["kernel"]) in {laws.series_of(k) for k in s.kernels}), None)
            name = owner.guest_label if owner else f"Linux {row['kernel']}"
            row["label"] = f"{name} on {row['hypervisor']}" if several else name
            row["order"] = order.get(owner.guest, len(order)) if owner else len(order)
        return sorted(rows, key=lambda r: (r["order"], r["label"]))

    def sizes_by_hypervisor(self) -> list[dict]:
        """Per hypervisor, in the posts' order: the `memory` sizes its records hold, smallest first."""
        types = sorted({_dtype(r) for r in self.records}, key=hypervisors.rank)
        return [{"hypervisor": hypervisors.label(dt),
                 "sizes": [size(m) for m in sorted({r.memory_mib for r in self.records if _dtype(r) == dt})]}
                for dt in types]

    def coverage(self) -> list[dict]:
        """Per hypervisor, in the posts' order: how many boots, the `memory` sizes from and to, and how
        often each point ran (fewest and most times), each a claim."""
        out = []
        for dt in sorted({_dtype(r) for r in self.records}, key=hypervisors.rank):
            mine = [r for r in self.records if _dtype(r) == dt]
            where = {**self.where, "domain_type": _dtype_where(dt)}
            per: dict = {}
            for r in mine:
                key = tuple(repr(r.get(k)) for k in IDENTITY)
                per[key] = per.get(key, 0) + 1
            sizes = [r.memory_mib for r in mine]
            out.append({"hypervisor": hypervisors.label(dt), "domain_type": dt,
                        "n": claimed(len(mine), leaf("record", where, "count")),
                        "lo": claimed(min(sizes), leaf("field:memory_mib", where, "min")),
                        "hi": claimed(max(sizes), leaf("field:memory_mib", where, "max")),
                        "most": claimed(max(per.values()), leaf("record", where, "most_per_point")),
                        "fewest": claimed(min(per.values()), leaf("record", where, "fewest_per_point"))})
        return out

    def kind_counts(self) -> list[dict]:
        """How many boots of each kind of guest: [{'what': 'of the probe', 'n': 162}, {'what': 'of a full
        system', 'n': 24}], each count a claim (records from before kinds were kept are the probe's)."""
        counts: dict = {}
        for r in self.records:
            kind = kind_of_record(r)
            counts[kind] = counts.get(kind, 0) + 1
        unnamed = kind_of_record({})
        return [{"what": k.boots_as,
                 "n": claimed(n, leaf("record", {**self.where, "guest_kind": [k.name, None] if k is unnamed else k.name},
                                      "count"))}
                for k, n in sorted(counts.items(), key=lambda kv: (not kv[0].bare, kv[0].name))]

    def family_labels(self, like: Series) -> list[str]:
        """The domain types measured on `like`'s hypervisor, as posts name them ('KVM', 'QEMU (TCG)')."""
        hv = hypervisors.for_domain_type(like.domain_type)
        return [hypervisors.label(t) for t in sorted({r.domain_type for r in self.records
                                                      if r.domain_type and hypervisors.for_domain_type(r.domain_type) is hv},
                                                     key=hypervisors.rank)]

    def boot_summary(self) -> list[str]:
        """How the guests' kernels were started, per hypervisor and kind of guest, in the hypervisor's own
        words: ['probe kernels on KVM and QEMU (TCG) through their PVH entry or by the firmware from the
        compressed image', 'probe kernels on Xen as PV domains from the compressed image', …]."""
        groups: dict[tuple, dict] = {}
        for r in self.records:
            if not r.boot_method:
                continue
            hv = hypervisors.for_domain_type(r.domain_type)
            g = groups.setdefault((hv.name, kind_of_record(r)), {"hv": hv, "types": set(), "methods": set()})
            g["types"].add(_dtype(r))
            g["methods"].add(r.boot_method)
        out = []
        for (_, kind), g in sorted(groups.items(), key=lambda kv: (min(hypervisors.rank(t) for t in kv[1]["types"]),
                                                                   not kv[0][1].bare, kv[0][1].name)):
            g["types"] = sorted(g["types"], key=hypervisors.rank)
            where = " and ".join(hypervisors.label(t) for t in g["types"])
            how = " or ".join(g["hv"].boot_words.get(m, m) for m in sorted(g["methods"], key=lambda m: (m != "pvh", m)))
            out.append(f"{kind.kernels_as} on {where} {how}")
        return out

    def boot_methods(self, like: Series) -> list[dict]:
        """How the probes were started on `like`'s hypervisor (its domain types, KVM and TCG alike), as
        their records say, in the hypervisor's words: [{'method': 'pvh', 'words': 'through their PVH entry',
        'guests': ['Debian 11 kernel 5.10', …]}], by method, in guest order."""
        hv = hypervisors.for_domain_type(like.domain_type)
        out: dict[str, list[str]] = {}
        for s in self.series:
            if s.is_system or hypervisors.for_domain_type(s.domain_type) is not hv:
                continue
            for method in sorted({str(r.boot_method) for p in s.points for r in p.records if r.boot_method}):  # series in guest order
                if s.guest_label not in out.setdefault(method, []):
                    out[method].append(s.guest_label)
        return [{"method": m, "words": hv.boot_words.get(m, m), "guests": g} for m, g in out.items()]

    def larger_than_host(self) -> list[dict]:
        """Per host whose guests' RAM was a memfd (larger than it could commit): the host's memory as its
        records say, and the smallest `memory` that ran so (claims)."""
        out = []
        for host in sorted({r.host for r in self.records if r.memory_backing == "memfd"},
                           key=lambda h: (self.host_order.index(h) if h in self.host_order else len(self.host_order), h)):
            mine = [r for r in self.records if r.host == host]
            where = {**self.where, "host": host}
            memfd = {**where, "memory_backing": "memfd"}
            host_mib = {r.host_memory_mib for r in mine if isinstance(r.host_memory_mib, int)}
            types = sorted({_dtype(r) for r in mine}, key=hypervisors.rank)
            out.append({"host": host, "hypervisor": " and ".join(hypervisors.label(t) for t in types),
                        "host_memory_mib": claimed(min(host_mib), leaf("field:host_memory_mib", where, "min"))
                        if host_mib else None,
                        "from_mib": claimed(min(r.memory_mib for r in mine if r.memory_backing == "memfd"),
                                            leaf("field:memory_mib", memfd, "min"))})
        return out

    def kernel_parameters(self) -> list[dict]:
        """Boots whose guest kernel had parameters of the manifest's (a host's `guest_cmdline` or a guest's
        `cmdline`), per hypervisor and parameters: from which `memory` on and to which (claims)."""
        groups: dict[tuple, list] = {}
        for r in self.records:
            if r.kernel_parameters:
                groups.setdefault((_dtype(r), r.kernel_parameters), []).append(r)
        out = []
        for (dt, params), mine in sorted(groups.items(), key=lambda kv: (hypervisors.rank(kv[0][0]), kv[0][1])):
            where = {**self.where, "domain_type": _dtype_where(dt), "kernel_parameters": params}
            hv = hypervisors.for_domain_type(dt)
            twins = [r for r in self.records if _dtype(r) != dt and hypervisors.for_domain_type(r.domain_type) is hv]
            without = [r for r in self.records if _dtype(r) == dt and not r.kernel_parameters]
            out.append({"hypervisor": hypervisors.label(dt), "parameters": params,
                        "all": len(mine) == sum(1 for r in self.records if _dtype(r) == dt),
                        "without": claimed(len(without), leaf("record", {**self.where, "domain_type": _dtype_where(dt),
                                                                         "kernel_parameters": None}, "count")),
                        "twins_without": bool(twins) and not any(r.kernel_parameters for r in twins),
                        "n": claimed(len(mine), leaf("record", where, "count")),
                        "lo": claimed(min(r.memory_mib for r in mine), leaf("field:memory_mib", where, "min")),
                        "hi": claimed(max(r.memory_mib for r in mine), leaf("field:memory_mib", where, "max"))})
        return out

    def accelerators(self) -> list[dict]:
        """Points measured on KVM and on TCG alike (same guest, sizes, factors): what the guest saw on each
        (median MemTotal once settled, KiB) and the difference."""
        out = []
        for kvm in self.series:
            twin = hypervisors.for_domain_type(kvm.domain_type).emulated_twin.get(kvm.domain_type)
            tcg = next((s for s in self.series if twin and s.domain_type == twin and s.guest == kvm.guest
                        and s.factors == kvm.factors), None)
            if tcg is None:
                continue
            for p in kvm.measured:
                q = tcg.at(p.memory_mib)
                a = [r.memtotal_settled_kib for r in p.ok if isinstance(r.memtotal_settled_kib, int)]
                b = [r.memtotal_settled_kib for r in (q.ok if q else []) if isinstance(r.memtotal_settled_kib, int)]
                if a and b:
                    wa, wb = {**p.where, "status": "ok"}, {**q.where, "status": "ok"}
                    ka = claimed(statistics.median(a), leaf("field:memtotal_settled_kib", wa))
                    kb = claimed(statistics.median(b), leaf("field:memtotal_settled_kib", wb))
                    items = {}
                    ia = [r.set_aside_kib for r in p.ok if isinstance(r.set_aside_kib, dict)]
                    ib = [r.set_aside_kib for r in (q.ok if q else []) if isinstance(r.set_aside_kib, dict)]
                    if ia and ib:
                        for name in sorted(set().union(*ia, *ib)):
                            items[name] = (claimed(statistics.median(d.get(name, 0) for d in ia),
                                                   leaf(f"item_kib:{name}", wa))
                                           - claimed(statistics.median(d.get(name, 0) for d in ib),
                                                     leaf(f"item_kib:{name}", wb)))
                    out.append({"guest": kvm.guest_label, "memory_mib": p.memory_mib, "kvm_kib": ka, "tcg_kib": kb,
                                "diff_kib": ka - kb, "items": items, "variant": kvm.variant,
                                "spread": {kvm.domain_type: _spread(p.ok, wa), twin: _spread(q.ok, wb)}})
        return out

    def accelerator_spread(self) -> dict:
        """At the points of `accelerators()`, how far the boots of one point on one accelerator differ among
        themselves, and whether KVM against TCG stays inside that.

        `sides`: per accelerator whose boots of one point ever differed, the largest spread (max - min over
        its boots) of what the guest saw and of each item that moved, KiB (points with two boots or more).
        `within`: how many points' KVM-TCG difference is no larger than the larger spread of that point's
        two sides (a side with one boot spreads 0); `beyond_kib`: the largest difference of the others."""
        per: dict[str, dict] = {}
        pairs = self.accelerators()
        inside, beyond = [], []
        for pair in pairs:
            widest = 0
            for dtype, spread in pair["spread"].items():
                if spread is None:
                    continue
                widest = max(widest, spread["seen_kib"])
                mine = per.setdefault(dtype, {"hypervisor": hypervisors.label(dtype), "domain_type": dtype,
                                              "seen_kib": None, "items": {}})
                if spread["seen_kib"] > 0 and (mine["seen_kib"] is None or spread["seen_kib"] > mine["seen_kib"]):
                    mine["seen_kib"] = spread["seen_kib"]          # the claim itself, with its query
                for name, kib in spread["items"].items():
                    if kib > 0 and (name not in mine["items"] or kib > mine["items"][name]):
                        mine["items"][name] = kib
            (inside if abs(pair["diff_kib"]) <= widest else beyond).append(pair)
        per = {dt: side for dt, side in per.items() if side["seen_kib"] is not None}   # sides whose boots differed
        count = lambda chosen: claimed(len(chosen), {"op": "count", "args": [p["diff_kib"].query for p in chosen]})
        return {"sides": sorted(per.values(), key=lambda d: hypervisors.rank(d["domain_type"])),
                "points": count(pairs), "within": count(inside),
                "beyond_kib": max((abs(p["diff_kib"]) for p in beyond), default=None)}

    def accelerator_items(self) -> dict[str, float]:
        """Per item of the set-aside, the largest difference between KVM and TCG at the same point (KiB)."""
        out: dict[str, float] = {}
        for pair in self.accelerators():
            for name, diff in pair["items"].items():
                out[name] = max(out.get(name, 0.0), abs(diff))   # the largest, with its own query
        return out

    def n_accelerators(self) -> int:
        """How many points were measured on KVM and on TCG alike (a claim: each point's pair listed)."""
        pairs = self.accelerators()
        return claimed(len(pairs), {"op": "count", "args": [p["diff_kib"].query for p in pairs]})

    def predict(self, guest: str, memory_mib: int, current_mib: int, need_mib: float | None = None):
        """predict.py's answer from this post's own records, or None if they cannot give one."""
        from ..errors import UserError
        from ..predict import predict

        try:
            answer = predict(self.records, guest, memory_mib, current_mib, need_mib)
        except UserError:
            return None
        asked = {"guest": guest, "memory_mib": memory_mib, "current_mib": current_mib, "need_mib": need_mib}
        where = point_where(self.records)
        return dataclasses.replace(answer, **{
            name: claimed(getattr(answer, name), {"predict": asked, "field": name, "where": where})
            for name in ("sees_mib", "set_aside_mib", "used_mib", "reserve_mib", "margin_mib", "spare_mib",
                         "largest_memory_mib")})

    @property
    def killed(self) -> list[tuple[str, int]]:
        """What the OOM killer killed, with in how many boots: from each dead guest's recorded kills,
        else from the 'Killed process N (name)' of its reason. Most often first."""
        counts: dict[str, int] = {}
        for r in self.records:
            if r.status not in ("oom", "panic"):
                continue
            names = list(r.oom_kills or []) or \
                re.findall(r"Killed process \d{1,9} \(([^)]{1,32})\)", r.reason or "")
            for n in dict.fromkeys(names):
                counts[n] = counts.get(n, 0) + 1
        where = {**self.where, "status": ["oom", "panic"]}
        return [(n, claimed(c, leaf(f"killed:{n}", where, "count")))
                for n, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]

    @property
    def panics(self) -> list[tuple[str, int]]:
        """The kernels' last words of the dead guests ('Kernel panic - not syncing: …'), with counts."""
        counts: dict[str, int] = {}
        for r in self.records:
            if r.status in ("oom", "panic"):
                m = re.search(r"Kernel panic - not syncing: ([^;]{1,80})", r.reason or "")
                if m:
                    counts[m.group(1).strip()] = counts.get(m.group(1).strip(), 0) + 1
        where = {**self.where, "status": ["oom", "panic"]}
        return [(n, claimed(c, leaf(f"panic:{n}", where, "count")))
                for n, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]

    @property
    def kernels_by_guest(self) -> list[tuple[str, list[str]]]:
        """(guest label, the kernel releases its records report), in series order."""
        out: dict[str, set] = {}
        for s in self.series:
            out.setdefault(s.guest_label, set()).update(s.kernels)
        return [(label, sorted(k)) for label, k in out.items()]

    @property
    def outcomes(self) -> dict:
        """The survival condition checked against every outcome of these records (predict.py)."""
        from ..predict import check_outcomes, margin_mib

        out = dict(check_outcomes(self.records))
        where = self.where
        for key in ("judged", "predicted", "built_with_current", "not_judged"):
            if isinstance(out.get(key), int):
                out[key] = claimed(out[key], {"outcomes": key, "where": where})
        for key in ("missed", "borderline"):   # each figure a claim on its own record (macros.point prints it)
            entries = []
            for e in out.get(key) or []:
                r = e["record"]
                one = {**point_where([r]), "repeat": r.repeat}
                entries.append({**e, "where": f"{r.get('experiment')}/{r.host}/{r.guest}",
                                "memory_mib": size(r.memory_mib), "current_memory_mib": size(r.current_memory_mib),
                                "repeat": claimed(r.repeat, leaf("field:repeat", one, "one")),
                                "margin_mib": claimed(margin_mib(r), leaf("margin_mib", one, "one"))})
            out[key] = entries
        out["n_missed"] = claimed(len(out.get("missed") or []), {"outcomes": "n_missed", "where": where})
        out["n_borderline"] = claimed(len(out.get("borderline") or []), {"outcomes": "n_borderline", "where": where})
        if isinstance(out.get("not_judged_why"), dict):
            out["not_judged_why"] = {why: claimed(n, {"outcomes": "not_judged_why", "why": why, "where": where})
                                     for why, n in out["not_judged_why"].items()}
        return out

    def versions(self, key: str) -> list[str]:
        return sorted({str(r[key]) for r in self.records if r.get(key)})

    @property
    def dates(self) -> tuple[str, str] | None:
        days = sorted(r.started_at[:10] for r in self.records if r.started_at)
        return (days[0], days[-1]) if days else None

    @property
    def hosts(self) -> list[dict]:
        seen: dict[str, dict] = {}
        for r in self.records:
            seen.setdefault(r.host, {"name": r.host, "kernel": r.host_kernel,
                                        "cores": r.host_cores, "memory_mib": r.host_memory_mib,
                                        "hypervisor": r.hypervisor, "libvirt": r.libvirt_version,
                                        "xen": r.xen, "nested": r.nested,
                                        "domain_types": set(), "reasons": set(), "kernels": {}})
            if r.host_kernel:  # every kernel the host ran, with how many records each (most first)
                counts = seen[r.host]["kernels"]
                counts[r.host_kernel] = counts.get(r.host_kernel, 0) + 1
            if r.domain_type:
                seen[r.host]["domain_types"].add(r.domain_type)
            if r.domain_type_reason:
                seen[r.host]["reasons"].add(r.domain_type_reason.replace(" (cached canary result)", ""))
        for h in seen.values():
            ranked = sorted(h["kernels"].items(), key=lambda kv: (-kv[1], kv[0]))
            h["kernel"] = ranked[0][0] if ranked else h["kernel"]
            on = {**self.where, "host": h["name"]}
            h["kernel_counts"] = [(k, claimed(n, leaf("record", {**on, "host_kernel": k}, "count"))) for k, n in ranked]
            h["cores"] = claimed(h["cores"], leaf("field:host_cores", on, "one"))
            h["memory_mib"] = claimed(h["memory_mib"], leaf("field:host_memory_mib", on, "one"))
            if isinstance(h["nested"], dict):
                h["nested"] = {k: claimed(v, leaf(f"nested:{k}", on, "one"))
                               if isinstance(v, int) and not isinstance(v, bool) else v for k, v in h["nested"].items()}
            if isinstance(h["xen"], dict):
                h["xen"] = {k: claimed(v, leaf(f"xen:{k}", on, "one"))
                            if isinstance(v, int) and not isinstance(v, bool) else v for k, v in h["xen"].items()}
        return list(seen.values())

    def explain(self, s: Series) -> list[dict]:
        """For each measured point beyond the first: the loss next to what the kernel reserved at boot.

        The page descriptors (64 bytes per 4 KiB page of *memory*) and the swiotlb bounce buffer are
        allocated at boot for all of memory; ballooning later cannot give them back.
        """
        base = s.measured[0] if s.measured else None
        rows = []
        if base is None:
            return rows
        for p in s.measured:
            extra_gib = (p.memory_mib - base.memory_mib) / 1024
            rows.append({
                "memory_mib": p.memory_mib,
                "lost_mib": s.current_memory_mib - p.median,
                "extra_lost_mib": base.median - p.median,
                "reserved_mib": p.reserved,
                "extra_reserved_mib": (p.reserved - base.reserved) if p.reserved is not None and
                base.reserved is not None else None,
                "struct_page_mib": (p.memory_mib - base.memory_mib) * STRUCT_PAGE / PAGE_SIZE,
                "swiotlb_mib": p.swiotlb - base.swiotlb,
                "extra_gib": extra_gib,
            })
        return rows
