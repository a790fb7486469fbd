"""The survival condition and predict (generator/predict.py) on records made for the test."""
from __future__ import annotations

import pytest

from generator import predict as pr
from generator.errors import UserError

# set-aside (KiB) and zone reserves of the Debian 12 kernel at 1, 4 and 16 GiB (tests/data/setaside)
ZONES = {
    1024: {"DMA": {"free": 15232, "min": 708, "managed": 15360, "protection": [0, 3744, 3744, 3744]},
           "DMA32": {"free": 931372, "min": 44344, "managed": 968384, "protection": [0, 0, 0, 0]}},
    4096: {"DMA": {"free": 13312, "min": 256, "managed": 15360, "protection": [0, 11752, 15564, 15564]},
           "DMA32": {"free": 2990000, "min": 50840, "managed": 3018408, "protection": [0, 0, 3808, 3808]},
           "Normal": {"free": 950000, "min": 16480, "managed": 975000, "protection": [0, 0, 0, 0]}},
    16384: {"DMA": {"free": 13312, "min": 60, "managed": 15360, "protection": [0, 11752, 63876, 63876]},
            "DMA32": {"free": 3005164, "min": 12424, "managed": 3018408, "protection": [0, 0, 52120, 52120]},
            "Normal": {"free": 13304448, "min": 55092, "managed": 13343488, "protection": [0, 0, 0, 0]}},
}


BOOT = {1024: 983744, 4096: 4009396, 16384: 16377256}


ITEMS = {1024: {"page descriptors": 16428, "hash tables": 1536, "kernel image": 45204, "unexplained": 1664},
         4096: {"page descriptors": 65582, "bounce buffer": 66304, "hash tables": 6144, "kernel image": 45204,
                "unexplained": 1674},
         16384: {"page descriptors": 262199, "bounce buffer": 66304, "hash tables": 24576, "kernel image": 45204,
                 "unexplained": 1677}}


def rec(memory, current, status="ok", **kw):
    return {"experiment": "how-low", "host": "local", "guest": "debian", "repeat": 1, "memory_mib": memory,
            "current_memory_mib": current, "status": status, "domain_type": "qemu", "guest_kernel": "6.1.0-57-amd64",
            "memory_model": "balloon", "autodeflate": False, "free_page_reporting": False,
            "memtotal_boot_kib": BOOT[memory], "memtotal_settled_kib": BOOT[memory] - (memory - current) * 1024
            if status == "ok" else None, "zone_reserves": {"zones": ZONES[memory], "sysctl": {}},
            "set_aside_kib": ITEMS[memory], **kw}


RECORDS = [rec(1024, 256), rec(1024, 128, "oom"), rec(4096, 512), rec(4096, 256, "oom"), rec(16384, 1024),
           rec(16384, 512, "oom")]


def test_the_reserve_is_watermarks_and_protection():
    # 1 GiB: no Normal zone, so DMA keeps its protection against DMA32 allocations
    assert pr.reserve_kib({"zones": ZONES[1024]}) == 708 + 3744 + 44344
    # 16 GiB: DMA is all kept (capped at its size), DMA32 min + its protection against Normal, Normal min
    assert pr.reserve_kib({"zones": ZONES[16384]}) == 15360 + 12424 + 52120 + 55092


def test_the_condition_predicts_these_deaths_and_survivals():
    got = pr.check_outcomes(RECORDS)
    assert got["judged"] == 6 and got["predicted"] == 6 and not got["missed"], got


def test_autodeflate_is_not_judged_and_xen_is_judged_on_what_it_boots_with():
    # a Xen PV guest is built with currentMemory: MemTotal at boot is what it has, whatever memory is
    xen = dict(rec(16384, 1024), domain_type="xen", memtotal_boot_kib=980_000,
               zone_reserves={"zones": {"DMA32": {"free": 900_000, "min": 4_000, "managed": 980_000,
                                                  "protection": [0, 0, 0, 0]}}})
    assert pr.margin_mib(xen) == pytest.approx((980_000 - 80_000 - 4_000) / 1024)
    hotplug = dict(rec(16384, 256, "ok", autodeflate=True, memory_model="virtio-mem"), memtotal_boot_kib=200_000,
                   zone_reserves={"zones": {"DMA32": {"free": 150_000, "min": 1_000, "managed": 200_000,
                                                       "protection": [0, 0, 0, 0]}}})
    assert pr.check_outcomes([hotplug])["judged"] == 1   # it inflates nothing: autodeflate changes nothing there
    recs = [rec(16384, 512, "ok", autodeflate=True), xen]
    got = pr.check_outcomes(recs)
    assert got["judged"] == 1 and got["predicted"] == 1 and got["not_judged"] == 1
    assert list(got["not_judged_why"]) == ["ballooned autodeflate boots, whose balloon gives pages back instead of holding its target"]
    # the same guest with no room left is predicted to die: recorded alive, it is a miss
    starved = dict(xen, zone_reserves={"zones": {"DMA32": {"free": 1_000, "min": 100_000, "managed": 980_000,
                                                           "protection": [0, 0, 0, 0]}}})
    assert pr.check_outcomes([starved])["missed"][0]["margin_mib"] < 0


def test_a_size_not_measured_follows_the_kernels_rules_per_item():
    p = pr.predict(RECORDS, "debian", 8192, 1024, need_mib=300)
    assert p.how == "from the kernel's rules (not measured at this size)" and p.measured_sizes == [1024, 4096, 16384]
    assert p.items["page descriptors"]["mib"] == pytest.approx(128.05, abs=0.1)  # 64 B per 4 KiB page
    assert p.items["page descriptors"]["per_gib"] == pytest.approx(16, abs=0.1)
    assert p.items["hash tables"]["mib"] == 12.0  # a power of two: 1.5 MiB per GiB there
    assert p.items["bounce buffer"]["mib"] == 64.8 and "a step" in p.items["bounce buffer"]["rule"]
    six = pr.predict(RECORDS, "debian", 6144, 1024)
    assert six.items["hash tables"]["mib"] == 12.0  # rounded up to the next power of two, not 9 on a line
    assert p.survives is True and p.margin_mib > 300 > p.margin_mib - p.spare_mib - 1
    assert p.largest_memory_mib and 8192 < p.largest_memory_mib < 16384 + 8192
    # at the largest size, the need just fits; one GiB more and it does not
    assert pr.predict(RECORDS, "debian", p.largest_memory_mib, 1024).margin_mib >= 300
    assert pr.predict(RECORDS, "debian", p.largest_memory_mib + 1024, 1024).margin_mib < 300


def test_beyond_the_measured_sizes_it_says_it_follows_the_rules():
    p = pr.predict(RECORDS, "debian", 65536, 1024)
    assert p.how.startswith("from the kernel's rules") and p.survives is False


def test_without_itemized_records_it_says_it_extrapolates():
    plain = [dict(r, set_aside_kib=None) for r in RECORDS]
    p = pr.predict(plain, "debian", 65536, 1024)
    assert p.how.startswith("extrapolated above the measured sizes, from 4 GiB and 16 GiB")
    assert p.survives is False and "interpolated between the measured sizes" in p.basis


@pytest.mark.parametrize("kwargs, message", [
    ({"guest": "debain"}, "--guest 'debain': no committed records of that guest; guests measured: debian"),
    ({"memory_mib": 512, "current_mib": 1024}, "is above --memory"),
    ({"hypervisor": "xen"}, "--hypervisor 'xen': guest 'debian' was measured on QEMU (TCG) (qemu)"),
    ({"experiment": "nope"}, "--experiment 'nope': guest 'debian' was measured in how-low"),
])
def test_bad_questions_are_one_clear_line(kwargs, message):
    args = {"guest": "debian", "memory_mib": 4096, "current_mib": 1024, **kwargs}
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pr.predict(RECORDS, args["guest"], args["memory_mib"], args["current_mib"],
                   experiment=args.get("experiment"), hypervisor=args.get("hypervisor"))


def test_hotplug_guests_are_judged_on_what_they_boot_with():
    boot = {"memtotal_boot_kib": 200_000, "zone_reserves": {"zones": {"DMA32": {
        "free": 150_000, "min": 1_000, "managed": 200_000, "protection": [0, 0, 0, 0]}}}}
    recs = [rec(16384, 256, "ok", memory_model="virtio-mem", **boot), rec(16384, 256, "ok", memory_model="dimm", **boot)]
    assert pr.margin_mib(recs[0]) == pytest.approx((200_000 - 50_000 - 1_000) / 1024)
    got = pr.check_outcomes(recs)
    assert got["judged"] == 2 and got["predicted"] == 2 and got["not_judged"] == 0
    assert pr.check_outcomes([rec(16384, 256, "ok", memory_model="dimm", zone_reserves=None)])["not_judged"] == 1


def test_a_system_read_settled_counts_what_it_uses_settled():
    settled = {"memtotal_settled_kib": 900_000, "zone_reserves": {"read": "settled", "zones": {"DMA32": {
        "free": 700_000, "min": 4_000, "managed": 900_000, "protection": [0, 0, 0, 0]}}}}
    r = rec(16384, 1024, "ok", guest="system", **settled)
    assert pr.used_kib(r) == 200_000  # MemTotal settled minus free settled, not MemTotal at boot minus it


def test_the_reserve_of_every_numa_node_counts():
    two = {"zones": {"DMA32": {"min": 10, "managed": 1000, "protection": [0, 0, 0, 0]},
                     "Normal": {"min": 500, "managed": 9000, "protection": [0, 0, 0, 0]},
                     "DMA32@1": {"min": 500, "managed": 1000, "protection": [0, 0, 0, 0]},
                     "Normal@1": {"min": 500, "managed": 9000, "protection": [0, 0, 0, 0]}}}
    assert pr.reserve_kib(two) == 1510


@pytest.mark.parametrize("asked", ["debian", "Debian 12", "debian 12 kernel 6.1", "6.1", "6.1.0-57-amd64",
                                   "  Debian   12 ", "bookworm", "debian:bookworm"])
def test_a_guest_is_found_by_the_names_a_reader_knows(asked):
    recs = RECORDS + [dict(rec(1024, 1024), guest="trixie", guest_kernel="6.12.117+deb13-amd64")]
    labels = {"debian": "Debian 12 kernel 6.1", "trixie": "Debian 13 kernel 6.12"}
    assert pr.resolve_guest(recs, labels, asked) == "debian"


def test_an_unknown_or_ambiguous_guest_lists_them_by_those_names():
    recs = RECORDS + [dict(rec(1024, 1024), guest="trixie", guest_kernel="6.12.117+deb13-amd64"),
                      dict(rec(1024, 1024), guest="system", guest_kind="system", set_aside_kib=None)]  # not itemized
    labels = {"debian": "Debian 12 kernel 6.1", "trixie": "Debian 13 kernel 6.12", "system": "Debian 12, full system"}
    with pytest.raises(UserError, match=r"guests measured: Debian 12 kernel 6.1 \(debian, kernel 6.1.0-57-amd64\); "
                                        r"Debian 13 kernel 6.12 \(trixie, kernel 6.12.117\+deb13-amd64\)$"):
        pr.resolve_guest(recs, labels, "Debian 14")
    twin = recs + [dict(rec(1024, 1024), guest="twin")]  # another guest with the same kernel
    with pytest.raises(UserError, match="'6.1' names several guests: Debian 12 kernel 6.1 \\(debian\\); twin"):
        pr.resolve_guest(twin, labels, "6.1")


def test_a_full_system_is_predicted_from_its_own_records_not_the_probes():
    """The full Debian 12 system's records are itemized (read once settled): predict answers for it
    by its own names, with what the system uses, and says so; the probe of the same series says its own."""
    from generator.model import committed_records
    from tests.support import ROOT

    records = committed_records(ROOT / "experiments")
    labels = {"system": "Debian 12, full system", "debian": "Debian 12 kernel 6.1"}
    assert pr.resolve_guest(records, labels, "Debian 12, full system") == "system"
    system = pr.predict(records, "system", 16384, 1024)
    probe = pr.predict(records, "debian", 16384, 1024)
    assert system.used_by.startswith("by the full system") and probe.used_by.startswith("at boot, by the probe")
    assert system.used_mib > probe.used_mib + 40  # systemd and its services use more than busybox
    assert abs(system.set_aside_mib - probe.set_aside_mib) < 1  # the same kernel series sets aside the same
    assert "in use " + f"{system.used_mib:,.0f} by the full system" in "\n".join(system.lines())
