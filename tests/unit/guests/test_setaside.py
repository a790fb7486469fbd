"""Itemizing the kernel's set-aside (generator/guests/setaside.py) from real memblock=debug captures
(tests/data/setaside) and from hostile text."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from generator.guests.console import Console
from generator.guests.setaside import (
    BOUNCE_BUFFER, HASH_TABLES, KERNEL, PAGE_DESCRIPTORS, UNEXPLAINED, itemize, zone_reserves
)
from tests.support import DATA as SUPPORT_DATA
from tests.support import ROOT

DATA = SUPPORT_DATA / "setaside"


CAPTURES = sorted(DATA.glob("qemu-*.txt"))


def capture(path: Path):
    console = Console.parse(path.read_text())
    memory = int(re.search(r"-(\d+)\.txt$", path.name).group(1))
    return console, memory, int(console.markers["boot-memtotal-kib"])


def items(path: Path) -> dict:
    console, memory, boot = capture(path)
    return itemize(console.sections["memblock"], memory * 1024, boot)["items"]


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.stem)
def test_items_sum_to_the_set_aside_with_under_a_mib_unexplained(path):
    console, memory, boot = capture(path)
    found = itemize(console.sections["memblock"], memory * 1024, boot)
    items = found["items"]
    assert found["set_aside_kib"] == memory * 1024 - boot
    assert sum(items.values()) == found["set_aside_kib"]
    assert abs(items[UNEXPLAINED]) < 1024, items
    # where the physics puts them: 64 bytes of struct page per 4 KiB page, for all of memory
    assert items[PAGE_DESCRIPTORS] == pytest.approx(memory * 16, abs=100)
    # a 64 MiB bounce buffer (and its slots) once RAM reaches above 4 GiB, none below
    if memory >= 4096:
        assert 65536 <= items[BOUNCE_BUFFER] <= 65536 + 1024
    else:
        assert BOUNCE_BUFFER not in items
    # hash tables grow with memory: 1.5 MiB per GiB here
    assert items[HASH_TABLES] == pytest.approx(memory * 1.5, rel=0.01)
    assert 30_000 < items[KERNEL] < 60_000  # the image stays its size


def test_the_growth_is_three_items():
    """What grows from 1 to 16 GiB is page descriptors, bounce buffer and hash tables (FIELD-NOTES)."""
    for kernel in ("5.10.0-32-amd64", "6.1.0-57-amd64", "6.12.117+deb13-amd64"):
        small, big = (items(DATA / f"qemu-{kernel}-{m}.txt") for m in (1024, 16384))
        growth = sum(big.values()) - sum(small.values())
        three = sum(big.get(k, 0) - small.get(k, 0) for k in (PAGE_DESCRIPTORS, BOUNCE_BUFFER, HASH_TABLES))
        assert abs(growth - three) < 100, (kernel, growth, three)


def test_zone_reserves_at_16_gib():
    console, _, _ = capture(DATA / "qemu-6.1.0-57-amd64-16384.txt")
    z = zone_reserves(console.sections["zoneinfo"])
    assert set(z["zones"]) == {"DMA", "DMA32", "Normal"}  # empty zones left out
    normal = z["zones"]["Normal"]
    assert normal["min"] < normal["low"] < normal["high"] and normal["managed"] > 13_000_000
    assert z["zones"]["DMA32"]["protection"][2] == 52120  # kept from allocations that could use Normal
    assert z["sysctl"]["min_free_kbytes"] == 67584 and z["sysctl"]["lowmem_reserve_ratio"][:3] == [256, 256, 32]


def test_without_the_memory_line_there_is_no_itemization():
    assert itemize("memblock_reserve: [0x0-0xfff] setup_arch+0x1/0x2\n", 1024 * 1024) is None


def test_hostile_text():
    console, memory, boot = capture(DATA / "qemu-6.1.0-57-amd64-4096.txt")
    text = console.sections["memblock"]
    clean = itemize(text, memory * 1024, boot)["items"]
    hostile = "\n".join([
        "memblock_alloc_try_nid: 99999999999999999999999 bytes align=0x40 nid=-1 x" + "A" * 5000 + "+0x1/0x2",
        "memblock_reserve: [0xffffffffffffffff-0x0000000000000000] setup_arch+0x1/0x2",  # backwards
        "memblock_reserve: [0x1-0x" + "f" * 40 + "] evil+0x1/0x2",                         # too long a number
        "Freeing evil memory: 999999999999999999999K",
        "\x1b[2Jmemblock_reserve: [0x5000-0x5fff] \u202eodd_caller+0x1/0x2",
        "kallsyms 0000000000000000 T _text",
    ]) + "\n" + text
    found = itemize(hostile, memory * 1024, boot)
    assert found["items"][UNEXPLAINED] == clean[UNEXPLAINED]  # the junk changes nothing it cannot back
    flood = "memblock_reserve: [0x1000-0x1fff] x+0x1/0x2\n" * 100_000 + text
    got = itemize(flood, memory * 1024, boot)
    assert got is None or got["totals"]["lines"] <= 6000  # bounded: the Memory: line is past the limit
    interleaved = "\n".join(line for pair in zip(text.splitlines(), ["[ 1.0] random noise"] * 10_000) for line in pair)
    assert itemize(interleaved, memory * 1024, boot)["items"] == clean
    assert zone_reserves("Node 0, zone Normal\n  managed 99999999999999999999\n") is None


def test_a_repeated_memory_map_and_a_flood_of_overlaps_change_nothing_and_stay_fast():
    import time

    console, memory, boot = capture(DATA / "qemu-6.1.0-57-amd64-4096.txt")
    text = console.sections["memblock"]
    clean = itemize(text, memory * 1024, boot)["items"]
    e820 = "\n".join(line for line in text.splitlines() if "BIOS-e820" in line)
    assert itemize(e820 + "\n" + text, memory * 1024, boot)["items"] == clean  # the map twice: RAM counted once
    flood = "memblock_reserve: [0x0-0x1ffffffffffff] x+0x1/0x2\n" * 2000 + \
        "".join(f"memblock_free: [0x{i * 8192:x}-0x{i * 8192 + 4095:x}] y+0x1/0x2\n" for i in range(2000))
    t0 = time.monotonic()
    found = itemize(flood + text, memory * 1024, boot)
    assert time.monotonic() - t0 < 5  # a bounded list, not one range per overlap
    assert sum(found["items"].values()) == found["set_aside_kib"]


def test_without_a_memory_map_reservations_are_bounded_by_memory():
    console, memory, boot = capture(DATA / "qemu-6.1.0-57-amd64-1024.txt")
    text = "\n".join(line for line in console.sections["memblock"].splitlines() if "BIOS-e820" not in line)
    huge = "memblock_reserve: [0x0-0x1ffffffffffff] x+0x1/0x2\n" + text
    found = itemize(huge, memory * 1024, boot)
    assert found["items"]["other boot allocations"] <= (memory + 4096) * 1024
    assert any("no e820 memory map" in n for n in found["notes"])


def test_a_xen_pv_guest_without_memblock_debug_is_itemized_from_the_kernels_totals():
    """Xen PV probes boot without memblock=debug (its early reservations overflow the kernel's log):
    the set-aside splits into what lies beyond Xen's map, the map's unpopulated part, the image, and
    the kernel's reservations as one item. Lines from an archived 128 GiB point."""
    import json

    from generator.guests.setaside import NOT_ITEMIZED, XEN_BEYOND, XEN_UNPOPULATED

    root = ROOT
    rec = json.loads((root / "experiments/memory-ballooning/results/xen/debian/"
                            "memory-131072MiB-current-1024MiB-r2.json").read_text())
    text = "\n".join(rec["dmesg"])
    memory = rec["memory_mib"] * 1024
    found = itemize(text, memory, rec["memtotal_boot_kib"], current_kib=1024 * 1024)
    items = found["items"]
    assert sum(items.values()) == memory - rec["memtotal_boot_kib"]
    map_end = max(int(line.split("-0x")[1].split("]")[0], 16) + 1 for line in rec["dmesg"]
                  if "Xen: [mem" in line and "usable" in line)
    assert items[XEN_BEYOND] == memory - map_end // 1024  # 117 GiB that no map describes
    assert 10 * 1024 * 1024 - 1024 < items[XEN_UNPOPULATED] < 10 * 1024 * 1024 + 1024  # about 10 GiB
    assert 0 < items[NOT_ITEMIZED] < 400 * 1024 and "unexplained" not in items
    assert any("without memblock=debug" in n for n in found["notes"])


def test_the_probe_greps_its_log_for_the_lines_a_full_system_is_filtered_by():
    from generator.guests.probe import INIT_SCRIPT
    from generator.guests.setaside import LOG_PATTERN

    assert f"grep -E '{LOG_PATTERN}'" in INIT_SCRIPT


def test_a_full_system_is_itemized_from_its_log_as_the_probe_is():
    """A settled system's dmesg (the probe's lines among everything else it logged), its kallsyms
    lines, /proc/zoneinfo and the sysctls give the probe's items, MemTotal at boot from the
    kernel's totals, and the zones marked as read settled."""
    from generator.guests.setaside import system_set_aside

    console, memory, boot = capture(DATA / "qemu-6.1.0-57-amd64-4096.txt")
    section = console.sections["memblock"].splitlines()
    symbols = "\n".join(line.removeprefix("kallsyms ") for line in section if line.startswith("kallsyms "))
    log = "\n".join(["[    0.000000] Linux version 6.1.0-57-amd64", "[    3.1] systemd[1]: Started Journal.",
                     "\x1b[31m[    4.0] Memory: 1K/2K available (forged, not the kernel's format)"]
                    + [line for line in section if not line.startswith("kallsyms ")]
                    + ["[   12.0] virtio_balloon virtio3: inflating"] * 500)
    zone_lines = console.sections["zoneinfo"].splitlines()
    zoneinfo = "\n".join(line for line in zone_lines if not line.startswith("sysctl "))
    sysctls = "\n".join(line.split(" ", 2)[2] for line in zone_lines if line.startswith("sysctl "))
    got = system_set_aside(log, symbols, zoneinfo, sysctls, memory * 1024)
    probe = itemize(console.sections["memblock"], memory * 1024)
    assert got["found"]["items"] == probe["items"] and got["notes"] == []
    assert abs(got["memtotal_boot_kib"] - boot) < 64  # the kernel's totals against the probe's own reading
    assert got["zone_reserves"]["read"] == "settled"
    assert got["zone_reserves"]["zones"] == zone_reserves(console.sections["zoneinfo"])["zones"]
    assert got["zone_reserves"]["sysctl"]["min_free_kbytes"] == zone_reserves(console.sections["zoneinfo"])[
        "sysctl"]["min_free_kbytes"]
    # the start of the log overwritten (a log buffer too small for it): said, not hidden
    late = "\n".join(line for line in log.splitlines() if "e820" not in line)
    assert any("overwritten" in n for n in system_set_aside(late, symbols, zoneinfo, sysctls, memory * 1024)["notes"])
    # no Memory: line at all: nothing itemized, and said
    bare = system_set_aside("[ 1.0] systemd[1]: hello", "", "", "", memory * 1024)
    assert bare["found"] is None and bare["memtotal_boot_kib"] is None and bare["zone_reserves"] is None
    assert any("not itemized" in n for n in bare["notes"])


def test_a_full_systems_hostile_log_zones_and_sysctls_stay_bounded():
    """What a full system gives back is the guest's text: markup, numbers past any machine, a flood of
    lines and sysctls that are not numbers give no item, no zone and no sysctl that is not sane."""
    import time

    from generator.guests.setaside import system_set_aside

    flood = "\n".join(["[ 0.1] memblock_reserve: [0x0-0xfff] <script>x()</script>+0x1/0x2"] * 200_000)
    forged = ("[ 0.2] Memory: 99999999999999999999K/1K available (1K kernel code, 1K rwdata, 1K rodata, 1K init, "
              "1K bss, 1K reserved, 0K cma-reserved)")
    zones = "Node 0, zone   Normal\n  pages free 999999999999999999999\n  managed 12\n  protection: (../../etc)\n"
    started = time.monotonic()
    got = system_set_aside(flood + "\n" + forged, "ffffffff81000000 T _text\n{{< x >}}", zones,
                           "nan\n-1\n$(id)\n256 256 32", 1024 * 1024)
    assert time.monotonic() - started < 10
    assert got["found"] is None and got["memtotal_boot_kib"] is None  # a number past the bound is no Memory: line
    reserves = got["zone_reserves"]
    assert reserves is None or all(isinstance(v, int) and v < 1 << 60 for z in reserves["zones"].values()
                                   for v in z.values() if not isinstance(v, list))
    if reserves:
        assert reserves["sysctl"].get("min_free_kbytes") is None  # 'nan' is not a number


# The two lines /proc/iomem gave in a real boot of the same kernel (TCG, 1 GiB): where the probe now
# reads the image's extent, instead of 100,000 lines of /proc/kallsyms.
IOMEM_6_1_0_57 = ["iomem 01000000-01e01d31 : Kernel code", "iomem 03310000-043fffff : Kernel bss"]


@pytest.mark.parametrize("name", ["qemu-6.1.0-57-amd64-1024.txt", "qemu-6.1.0-57-amd64-16384.txt"])
def test_the_image_extent_from_iomem_itemizes_as_kallsyms_did(name):
    console, memory, boot = capture(DATA / name)
    text = console.sections["memblock"]
    with_symbols = itemize(text, memory * 1024, boot)
    lines = [line for line in text.splitlines() if not line.startswith("kallsyms ")]
    with_iomem = itemize("\n".join(lines + IOMEM_6_1_0_57), memory * 1024, boot)
    assert with_iomem["items"] == with_symbols["items"] and with_iomem["set_aside_kib"] == with_symbols["set_aside_kib"]
    assert not with_iomem["notes"]
    # without either, the image is summed from its sections, and says so
    neither = itemize("\n".join(lines), memory * 1024, boot)
    assert any("no kernel symbols" in n for n in neither["notes"])
    # hostile or unprivileged iomem lines: malformed, zero (iomem read without CAP_SYS_ADMIN), reversed, or an
    # image of 4 GiB: none is taken for the image's extent
    for junk in (["iomem 01000000-" + "f" * 40 + " : Kernel bss", "iomem x : Kernel code"],
                 ["iomem 00000000-00000000 : Kernel code", "iomem 00000000-00000000 : Kernel bss"],
                 ["iomem 04000000-04ffffff : Kernel code", "iomem 01000000-01ffffff : Kernel bss"],
                 ["iomem 01000000-01e01d31 : Kernel code", "iomem 100000000-100ffffff : Kernel bss"]):
        bad = itemize("\n".join(lines + junk), memory * 1024, boot)
        assert any("no kernel symbols" in n for n in bad["notes"]), junk
        assert bad["items"] == neither["items"]
    # kallsyms' virtual pair and iomem's physical pair are never mixed
    text_only = [line for line in text.splitlines() if not line.endswith(("__bss_stop", "__end_of_kernel_reserve"))]
    mixed = itemize("\n".join(text_only + IOMEM_6_1_0_57[1:]), memory * 1024, boot)
    assert any("no kernel symbols" in n for n in mixed["notes"])


def test_the_probes_iomem_snippet_run_by_a_shell(tmp_path):
    """The init script's lines that pick the image's extent, run by sh on a fixture of /proc/iomem: both
    lines when both are there, kallsyms (here: a fixture) when one is missing."""
    import subprocess

    from generator.guests.probe import INIT_SCRIPT

    start = INIT_SCRIPT.index("K=$(grep")
    snippet = INIT_SCRIPT[start:INIT_SCRIPT.index("\nfi\n", start) + 4]
    iomem, kallsyms = tmp_path / "iomem", tmp_path / "kallsyms"
    kallsyms.write_text("ffffffff81000000 T _text\nffffffff84400000 B __bss_stop\n")
    script = snippet.replace("/proc/iomem", str(iomem)).replace("/proc/kallsyms", str(kallsyms))

    def run(text: str) -> list[str]:
        iomem.write_text(text)
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=10).stdout.splitlines()
    both = ("00000000-00000fff : Reserved\n00100000-bffdffff : System RAM\n  01000000-01e01d31 : Kernel code\n"
            "  02000000-0289ffff : Kernel rodata\n  03310000-043fffff : Kernel bss\n")
    assert run(both) == IOMEM_6_1_0_57
    twice_code = "  01000000-01e01d31 : Kernel code\n  01000000-01e01d31 : Kernel code\n"
    assert run(twice_code) == ["kallsyms ffffffff81000000 T _text", "kallsyms ffffffff84400000 B __bss_stop"]


def test_the_probe_reads_the_image_extent_from_iomem_before_kallsyms():
    from generator.guests.probe import INIT_SCRIPT

    assert INIT_SCRIPT.index("/proc/iomem") < INIT_SCRIPT.index("/proc/kallsyms")
    assert "sed 's/^ */iomem /'" in INIT_SCRIPT
