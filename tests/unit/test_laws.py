"""The kernel's sizing rules (generator/laws.py) against every committed record: each item of the
set-aside, the whole set-aside of every boot (itemized or not, 64 and 128 GiB included) and the page
allocator's reserve, within 1 MiB; and the rules' steps where a straight line has none."""
from __future__ import annotations

import pytest

from generator import laws as L
from generator import predict as pr
from generator.model import committed_records
from generator.results import as_record
from tests.support import ROOT


@pytest.fixture(scope="module")
def records():
    return [as_record(r) for r in committed_records(ROOT / "experiments")]


@pytest.fixture(scope="module")
def laws(records):
    return L.all_laws(records)


def test_every_record_agrees_with_the_laws_item_by_item(records, laws):
    assert laws, "no itemized records to fit the laws to"
    off = L.disagreements(records, laws)
    assert not off, "law and record disagree by more than 1 MiB: " + "; ".join(
        f"{d['record']}: {d['item']} law {d['law_kib']} KiB, record {d['record_kib']} KiB" for d in off[:10])


def test_the_laws_are_checked_on_boots_that_were_not_itemized(records, laws):
    """The 64 and 128 GiB boots have no itemization, only MemTotal at boot: the laws still hold there,
    hash tables that stop growing above 64 GiB included (ADAPT_SCALE)."""
    big = [r for r in records if r.memory_mib >= 65536 and isinstance(r.memtotal_boot_kib, int)
           and (r.domain_type, L.series_of(r.guest_kernel)) in laws]
    assert len(big) >= 9
    for r in big:
        law = laws[(r.domain_type, L.series_of(r.guest_kernel))]
        g = L.guest_of(r.memory_mib, r.current_memory_mib, r.memory_model or "balloon", r.domain_type)
        assert abs(law.set_aside_kib(g) - (r.memory_mib * 1024 - r.memtotal_boot_kib)) <= L.TOLERANCE_KIB, r.key


def test_a_planted_wrong_item_is_named(records, laws):
    rec = next(r for r in records if isinstance(r.set_aside_kib, dict) and r.set_aside_kib.get("hash tables"))
    bad = as_record(dict(rec, set_aside_kib=dict(rec.set_aside_kib, **{"hash tables": rec.set_aside_kib["hash tables"]
                                                                       + 4096})))
    off = L.disagreements([bad], laws)
    assert [d["item"] for d in off] == ["hash tables"] and "memory" in off[0]["record"]


@pytest.mark.parametrize("memory_gib, mib", [(1, 1.5), (4, 6), (6, 12), (12, 24), (16, 24), (32, 48), (64, 96),
                                             (128, 96)])
def test_hash_tables_step_at_powers_of_two_and_stop_above_64_gib(memory_gib, mib):
    assert L.hash_tables_kib(memory_gib * 1024) / 1024 == mib


def test_the_bounce_buffer_is_a_step_where_ram_may_lie_above_4_gib():
    assert not L.guest_of(3584, 1024, "balloon", "qemu").above_4g
    assert L.guest_of(3585, 1024, "balloon", "qemu").above_4g
    assert L.guest_of(1024, 256, "virtio-mem", "qemu").above_4g  # hotplug memory lives above 4 GiB
    assert not L.guest_of(1024, 1024, "virtio-mem", "qemu").above_4g  # nothing to plug: no device memory
    assert not L.guest_of(131072, 1024, "balloon", "xen").above_4g  # a Xen PV guest sets up none


def test_the_reserve_follows_the_watermark_rules(records, laws):
    checked = 0
    for r in records:
        law = laws.get((r.domain_type, L.series_of(r.guest_kernel)))
        measured = pr.reserve_kib(r.zone_reserves)
        if law is None or measured is None or (r.memory_model or "balloon") != "balloon":
            continue
        g = L.guest_of(r.memory_mib, r.current_memory_mib, "balloon", r.domain_type)
        if law.reserve_kib(g) is None:  # Xen PV: its zones are not ruled here (its reserve is read, not predicted)
            assert r.domain_type == "xen"
            continue
        assert abs(law.reserve_kib(g) - measured) <= L.TOLERANCE_KIB, (r.key, law.reserve_kib(g), measured)
        checked += 1
    assert checked >= 30


def test_one_marginal_cost_per_gib(laws):
    """16 MiB of page descriptors and 1.5 of hash tables per GiB between powers of two: 17.5, on every kernel
    measured; the bounce buffer is a step of its own."""
    for key, law in laws.items():
        if law.dma32_managed_kib is not None:
            assert L.marginal_per_gib(law) == pytest.approx(17.5, abs=0.05), key
            assert 64 <= law.bounce_kib / 1024 <= 65, key


def test_the_sizing_table_from_the_laws(records):
    rows = {r["kernel"].split(".")[0] + "." + r["kernel"].split(".")[1]: r for r in pr.sizing_table(records)
            if r["domain_type"] == "qemu"}
    debian = {s["current_memory_mib"]: s for s in rows["6.1"]["sizes"]}
    assert 12 * 1024 < debian[512]["survives_to_mib"] < 14 * 1024
    assert 33 * 1024 < debian[1024]["survives_to_mib"] < 37 * 1024
    assert 84 * 1024 < debian[2048]["survives_to_mib"] < 88 * 1024
    for s in debian.values():  # leaving 300 MiB for work always costs ceiling
        assert s["leaves_need_to_mib"] < s["survives_to_mib"]
    # the measured outcomes agree: 1024 MiB survived at 32 GiB and died at 64 GiB
    outcome = {r.memory_mib: r.status for r in records if r.experiment == "memory-ballooning" and r.guest == "debian"
               and r.domain_type == "qemu" and r.repeat == 1}
    assert outcome[32768] == "ok" and outcome[65536] == "oom"


def test_the_shipped_rules_are_the_records_rules():
    """generator/data/laws.json (what predict uses outside a checkout) is what the committed records give:
    `python -m generator model` (make build, make report) rewrites it."""
    import json

    from generator.model import guest_labels

    doc = L.export(committed_records(ROOT / "experiments"), guest_labels(ROOT / "experiments"))
    shipped = json.loads((ROOT / "generator" / L.SHIPPED).read_text())
    assert shipped == json.loads(json.dumps(doc)), "generator/data/laws.json is stale: run make build"


def test_predict_from_the_shipped_rules_answers_as_from_the_records(records):
    doc = L.shipped()
    assert doc is not None
    for memory, current in ((6144, 2048), (24576, 1024), (4096, 512)):
        a = pr.predict(records, "debian", memory, current, 300, experiment="memory-ballooning")
        b = pr.predict_shipped(doc, "Debian 12", memory, current, 300)
        assert abs(a.set_aside_mib - b.set_aside_mib) <= 1 and a.survives == b.survives
        assert abs(a.margin_mib - b.margin_mib) <= 1 and a.largest_memory_mib == b.largest_memory_mib
    with pytest.raises(pr.UserError, match="guests measured: Debian 11 kernel 5.10"):
        pr.predict_shipped(doc, "Windows", 4096, 1024)


def test_shipped_rules_that_are_not_numbers_are_refused():
    doc = L.shipped()
    entry = dict(doc["laws"][0]["laws"])
    for key, bad in (("bounce_kib", "64 MiB"), ("page_descriptors", [True, 0]), ("used", {"x": [1, 2]})):
        with pytest.raises((ValueError, TypeError)):
            L.laws_of(dict(entry, **{key: bad}))
    assert L.laws_of(entry).bounce_kib == entry["bounce_kib"]


def test_xen_pv_follows_its_map_rule_on_every_boot():
    """A Xen PV guest's map is its starting memory plus at most ten times that (`xen_memory_setup`):
    at currentMemory 1 GiB the map stops at 11 GiB, and what lies beyond it is set aside whole. Every
    Xen boot, itemized from its kernel's totals (the dmesg lines each record keeps), agrees with its
    kernel's laws within 1 MiB per item and in total."""
    from generator.guests.setaside import XEN_BEYOND, itemize

    g = L.guest_of(131072, 1024, "balloon", "xen")
    assert g.xen_map_mib == 11264 and not g.above_4g
    assert L.guest_of(4096, 1024, "balloon", "xen").xen_map_mib == 4096
    xen = []
    for r in committed_records(ROOT / "experiments"):
        if r.get("domain_type") != "xen" or r.get("status") != "ok":
            continue
        found = itemize("\n".join(r["dmesg"]), r["memory_mib"] * 1024, r["memtotal_boot_kib"],
                        current_kib=r["current_memory_mib"] * 1024)
        xen.append(dict(r, set_aside_kib=found["items"]))
    assert len(xen) >= 72
    laws = L.all_laws(xen)
    assert {k for k in laws if k[0] == "xen"} == {("xen", "5.10"), ("xen", "6.1"), ("xen", "6.12")}
    assert L.disagreements(xen, laws) == []
    # the kernel's other reservations grow alike in all three: about 4.2 MiB per GiB of map beyond 64 B/page
    assert all(4000 < law.xen_reservations[1] < 4300 for law in laws.values())
    big = next(r for r in xen if r["memory_mib"] == 131072)
    assert big["set_aside_kib"][XEN_BEYOND] == laws[("xen", L.series_of(big["guest_kernel"]))].items(g)[XEN_BEYOND]
