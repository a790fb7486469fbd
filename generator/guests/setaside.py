"""Where the set-aside goes: the kernel's boot-time reservations itemized, and the page allocator's
reserves, from what the probe prints at boot (guest text: parsed as hostile, bounded).

The set-aside is `memory` minus MemTotal at boot. The kernel's own accounting gives it exactly:

    set-aside = (memory - the RAM the kernel found)            memory-map holes (the Memory: line's total)
              + what memblock had reserved when the page allocator took over   (its 'reserved')
              - what was handed back after that             (the 'Freeing … memory: NK' lines)

With `memblock=debug` the kernel logs each reservation made after its command line is parsed, with
the function that asked for it. An allocation is logged twice: `memblock_alloc…: N bytes … caller`
and then `memblock_reserve: [a-b] memblock_alloc_range_nid`; the range is counted once, for the
caller. Ranges are clipped to the RAM of the e820 map and counted once where they overlap. What
was reserved before logging started (the kernel image, the initramfs, early page tables) is the
reserved total minus what was logged; the kernel image's share of it is what the Memory: line says
the image is (code, read-only data, data, bss; init is handed back), and what remains is reported
as `unexplained`, with the reason in `notes`.

Items are in words a reader knows, summed in KiB.
"""
from __future__ import annotations

import re

from ..text import bounded_int

MAX_LINES = 6000           # the probe prints at most this many; more is not read
MAX_CALLER = 64

PAGE_DESCRIPTORS = "page descriptors"
BOUNCE_BUFFER = "bounce buffer"
HASH_TABLES = "hash tables"
PER_CPU = "per-CPU areas"
PAGE_TABLES = "page tables"
FIRMWARE = "firmware and memory-map holes"
KERNEL = "kernel image"
INITRAMFS = "initramfs"
XEN_UNPOPULATED = "Xen's unpopulated map"
XEN_BEYOND = "beyond Xen's memory map"
XEN_P2M = "Xen's page lists (p2m)"
NOT_ITEMIZED = "other boot reservations (not itemized)"
OTHER = "other boot allocations"
UNEXPLAINED = "unexplained"

# caller (function name) -> item; the first matching prefix wins
_CALLERS = [
    (("sparse_", "vmemmap_", "__populate_section_memmap", "memmap_alloc", "alloc_node_mem_map",
      "__earlyonly_bootmem_alloc", "populate_section_memmap"), PAGE_DESCRIPTORS),
    (("swiotlb_",), BOUNCE_BUFFER),
    (("alloc_large_system_hash",), HASH_TABLES),
    (("pcpu_", "setup_per_cpu_areas", "alloc_bootmem_cpumask_var"), PER_CPU),
    (("init_mem_mapping", "alloc_low_page", "spp_getpage", "early_alloc_pgt_buf", "kernel_physical_mapping_init",
      "phys_p4d_init", "phys_pud_init", "phys_pmd_init", "early_pgtable", "xen_pagetable", "xen_setup_kernel_pagetable",
      "xen_setup_kernel_pagetables"), PAGE_TABLES),
    (("reserve_real_mode", "acpi_", "smp_scan_config", "e820__", "firmware_map_", "reserve_bios_regions",
      "dmi_", "efi_", "reserve_ibft_region", "memblock_x86_reserve_range_setup_data", "trim_", "early_reserve_memory",
      "reserve_ebda", "mptable"), FIRMWARE),
    (("reserve_initrd", "relocate_initrd", "early_reserve_initrd"), INITRAMFS),
    (("xen_",), XEN_P2M),  # the PV guest's page lists (p2m) and other Xen boot structures
]

_TIME = r"(?:\[\s*[0-9.]{1,20}\]\s*)?"
_ALLOC = re.compile(_TIME + r"memblock_(?:phys_)?alloc[a-z_]{0,30}: ([0-9]{1,15}) bytes .{0,200}? ([A-Za-z_][\w.]{0,63})\+0x")
_RESERVE = re.compile(_TIME + r"memblock_reserve: \[0x([0-9a-f]{1,16})-0x([0-9a-f]{1,16})\] ([A-Za-z_][\w.]{0,63})\+0x")
_FREE = re.compile(_TIME + r"memblock_(?:phys_)?free[a-z_]{0,10}: \[0x([0-9a-f]{1,16})-0x([0-9a-f]{1,16})\]")
_MEMORY = re.compile(_TIME + r"Memory: ([0-9]{1,15})K/([0-9]{1,15})K available \(([0-9]{1,15})K kernel code, "
                     r"([0-9]{1,15})K rwdata, ([0-9]{1,15})K rodata, ([0-9]{1,15})K init, ([0-9]{1,15})K bss, "
                     r"([0-9]{1,15})K reserved")
_FREEING = re.compile(_TIME + r"Freeing ([A-Za-z][\w ()/-]{0,60}?) memory: ([0-9]{1,15})K")
_KALLSYMS = re.compile(r"^kallsyms ([0-9a-f]{16}) [A-Za-z] (_text|__end_of_kernel_reserve|__bss_stop)$")
# The same extent from /proc/iomem (a few lines, where /proc/kallsyms is 100,000 and takes the probe about
# 2 s to read under TCG): setup_arch() registers "Kernel code" from __pa_symbol(_text) and "Kernel bss" up
# to __pa_symbol(__bss_stop) - 1, and vmlinux.lds.S puts __end_of_kernel_reserve at __bss_stop.
_IOMEM = re.compile(r"^iomem ([0-9a-f]{1,16})-([0-9a-f]{1,16}) : Kernel (code|bss)$")
_E820 = re.compile(_TIME + r"(?:BIOS-e820|Xen): \[mem 0x([0-9a-f]{1,16})-0x([0-9a-f]{1,16})\] usable")
_XEN_MAP = re.compile(_TIME + r"Xen: \[mem 0x[0-9a-f]{1,16}-0x([0-9a-f]{1,16})\] usable")


def _image_extent_kib(symbols: dict, sections_kib: float) -> float | None:
    """The kernel image's extent (KiB) from one consistent pair of addresses: kallsyms' virtual ones, else
    iomem's physical ones. Only an extent that can be the image's is taken: it holds at least the sections
    the Memory: line counts, and not more than twice them (alignment pads them by some MiB); an address of
    0 (iomem read without privilege) or a guest's made-up numbers give None."""
    pairs = ((symbols.get("_text"), symbols.get("__end_of_kernel_reserve") or symbols.get("__bss_stop")),
             (symbols.get("iomem:_text"), symbols.get("iomem:__bss_stop")))
    for start, end in pairs:
        if start and end and end > start:
            kib = (end - start) / 1024
            if sections_kib <= kib <= 2 * sections_kib:
                return kib
    return None


def item_of(caller: str) -> str:
    for prefixes, item in _CALLERS:
        if caller.startswith(prefixes):
            return item
    return OTHER


class Coverage:
    """Reserved ranges, each byte once, in log order: a reservation claims only what no earlier one
    holds (first claim wins), a free releases what it covers. Kept sorted and disjoint, so a flood of
    overlapping lines costs a bounded list, not a product of them."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ranges: list[tuple[int, int, str]] = []  # (start, end exclusive, item), sorted, disjoint

    def _overlapping(self, start: int, end: int) -> tuple[int, int]:
        import bisect

        i = max(0, bisect.bisect_right(self.starts, start) - 1)
        if i < len(self.ranges) and self.ranges[i][1] <= start:
            i += 1
        j = i
        while j < len(self.ranges) and self.ranges[j][0] < end:
            j += 1
        return i, j

    def reserve(self, start: int, end: int, item: str) -> None:
        i, j = self._overlapping(start, end)
        pieces, at = [], start
        for s, e, _ in self.ranges[i:j]:
            if s > at:
                pieces.append((at, s, item))
            at = max(at, e)
        if at < end:
            pieces.append((at, end, item))
        merged = sorted(self.ranges[i:j] + pieces)
        self.ranges[i:j] = merged
        self.starts[i:j] = [s for s, _, _ in merged]

    def free(self, start: int, end: int) -> None:
        i, j = self._overlapping(start, end)
        kept = [p for s, e, item in self.ranges[i:j] for p in ((s, min(e, start), item), (max(s, end), e, item))
                if p[0] < p[1]]
        self.ranges[i:j] = kept
        self.starts[i:j] = [s for s, _, _ in kept]


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _clip(ranges, ram: list[tuple[int, int]]):
    """The parts of (disjoint) ranges inside RAM (merged, page-aligned usable e820 ranges)."""
    import bisect

    starts = [s for s, _ in ram]
    out = []
    for s, e, item in ranges:
        k = max(0, bisect.bisect_right(starts, s) - 1)
        while k < len(ram) and ram[k][0] < e:
            lo, hi = max(s, ram[k][0]), min(e, ram[k][1])
            if lo < hi:
                out.append((lo, hi, item))
            k += 1
    return out


def itemize(text: str, memory_kib: int, memtotal_boot_kib: int | None = None,
            xen_ballooned_kib: int | None = None, current_kib: int | None = None) -> dict | None:
    """{'items': {item: KiB}, 'set_aside_kib': N, 'notes': [...]} from the probe's memblock section,
    or None if the Memory: line is missing (no itemization without the kernel's totals)."""
    lines = text.splitlines()[:MAX_LINES + 40]  # the probe prints at most 6000 log lines, then the symbols
    memory_line = None
    pending: str | None = None       # the caller of the last alloc line, waiting for its range
    logged = Coverage()
    debug_lines = 0                  # memblock=debug's own lines: none when it was not on
    freeing: dict[str, int] = {}
    ram: list[tuple[int, int]] = []
    symbols: dict[str, int] = {}
    xen_map_end = 0  # a Xen PV guest's memory map, as Xen described it
    for line in lines:
        line = line[:400]
        if m := _ALLOC.search(line):
            pending = item_of(m.group(2))
            debug_lines += 1
            continue
        if m := _RESERVE.search(line):
            start, end, caller = int(m.group(1), 16), int(m.group(2), 16) + 1, m.group(3)
            debug_lines += 1
            if end > start and end - start < 1 << 50:
                if caller.startswith("memblock_alloc_range_nid") or caller.startswith("memblock_alloc_internal"):
                    logged.reserve(start, end, pending or OTHER)
                    pending = None
                else:
                    logged.reserve(start, end, item_of(caller))
            continue
        if m := _FREE.search(line):
            start, end = int(m.group(1), 16), int(m.group(2), 16) + 1
            if end > start:  # handed back: no longer reserved (a later reservation may reuse it)
                logged.free(start, end)
            continue
        if m := _KALLSYMS.match(line):
            symbols[m.group(2)] = int(m.group(1), 16)
            continue
        if m := _IOMEM.match(line):  # physical addresses, kept apart from kallsyms' virtual ones
            if m.group(3) == "code":
                symbols.setdefault("iomem:_text", int(m.group(1), 16))
            else:
                symbols.setdefault("iomem:__bss_stop", int(m.group(2), 16) + 1)
            continue
        if m := _XEN_MAP.search(line):
            xen_map_end = max(xen_map_end, int(m.group(1), 16) + 1)
        if m := _E820.search(line):
            s, e = int(m.group(1), 16), int(m.group(2), 16) + 1
            s, e = (s + 4095) // 4096 * 4096, e // 4096 * 4096
            if e > s and len(ram) < 1000:
                ram.append((s, e))
            continue
        if m := _FREEING.search(line):
            what, kib = m.group(1).strip(), bounded_int(m.group(2))
            if kib is not None and len(freeing) < 50:
                freeing[what] = freeing.get(what, 0) + kib
            continue
        if memory_line is None and (m := _MEMORY.search(line)):
            memory_line = [bounded_int(g) for g in m.groups()]
    if memory_line is None or None in memory_line:
        return None
    _available, physpages, code, rwdata, rodata, init, bss, reserved = memory_line
    notes = []
    if not ram:  # no e820 map (a Xen PV guest prints its own): RAM is at most memory plus the PCI hole
        ram = [(0, memory_kib * 1024 + (4 << 30))]
        notes.append("no e820 memory map in the log: reservations were counted up to memory plus 4 GiB")
    counted = _clip(logged.ranges, _merge(ram))
    items: dict[str, float] = {}
    for s, e, item in counted:
        items[item] = items.get(item, 0) + (e - s) / 1024
    holes = max(0, memory_kib - physpages)
    if xen_map_end and xen_map_end // 1024 < memory_kib:  # Xen described less than memory: the rest is not RAM
        beyond = memory_kib - xen_map_end // 1024
        items[XEN_BEYOND] = beyond
        holes = max(0, holes - beyond)
    items[FIRMWARE] = items.get(FIRMWARE, 0) + holes
    logged_kib = sum((e - s) / 1024 for s, e, _ in counted)
    early = reserved - logged_kib               # reserved before logging started
    handed_back = sum(freeing.values())
    initrd_back = sum(v for k, v in freeing.items() if "initrd" in k)
    image_back = handed_back - initrd_back      # init sections, gaps, alternatives: parts of the image
    sections = code + rodata + rwdata + init + bss
    extent = _image_extent_kib(symbols, sections)
    if extent is not None:
        image_reserved = extent   # what setup_arch reserved for the image: _text to __end_of_kernel_reserve
    else:  # no symbols (kptr_restrict) or none that hold together: the sections the Memory: line names
        image_reserved = sections + (image_back - init)
        notes.append("the kernel image's size is the sum of its sections (no kernel symbols to read its extent)")
    items[KERNEL] = items.get(KERNEL, 0) + image_reserved - image_back
    set_aside = holes + reserved - handed_back
    # what was reserved before logging and is neither the image nor the initramfs (handed back later)
    rest = early - image_reserved - initrd_back
    if xen_map_end and current_kib:
        # a PV guest is built with currentMemory populated; the rest of the map Xen described is
        # reserved at boot, unpopulated (Xen's balloon holds it, or it waits to be populated)
        unpopulated = max(0, physpages - current_kib)
        items[XEN_UNPOPULATED] = unpopulated
        rest -= unpopulated
    elif xen_ballooned_kib:
        items[XEN_UNPOPULATED] = xen_ballooned_kib
        rest -= xen_ballooned_kib
    if debug_lines:
        items[UNEXPLAINED] = rest
    else:  # booted without memblock=debug: the kernel's totals say how much, not what for
        items[NOT_ITEMIZED] = rest
        items[UNEXPLAINED] = 0
        notes.append("booted without memblock=debug: the kernel's own reservations are one item, not itemized")
    if memtotal_boot_kib is not None:
        drift = (memory_kib - memtotal_boot_kib) - set_aside
        if drift:
            items[UNEXPLAINED if debug_lines else NOT_ITEMIZED] += drift
            notes.append(f"MemTotal at boot differs from the kernel's own totals by {drift:+.0f} KiB "
                         "(memory handed back or taken between the Memory: line and the probe's reading)")
        set_aside = memory_kib - memtotal_boot_kib
    if debug_lines and abs(items[UNEXPLAINED]) >= 1024:
        notes.append(f"{items[UNEXPLAINED] / 1024:.1f} MiB reserved before the kernel logs reservations is "
                     "neither its image nor handed back later")
    out = {k: round(v) for k, v in sorted(items.items()) if round(v) and k not in (UNEXPLAINED, NOT_ITEMIZED)}
    if debug_lines:
        out[UNEXPLAINED] = round(set_aside) - sum(out.values())  # the items sum to the set-aside exactly
    else:
        out[NOT_ITEMIZED] = round(set_aside) - sum(out.values())
    return {"items": out, "set_aside_kib": round(set_aside), "notes": notes,
            "totals": {"ram_kib": physpages, "reserved_kib": reserved, "handed_back_kib": handed_back,
                       "logged_kib": round(logged_kib), "lines": len(lines)}}


# --- the page allocator's reserves ------------------------------------------------------------------
_ZONE = re.compile(r"^Node\s+([0-9]{1,4}), zone\s+([A-Za-z0-9]{1,16})$")
_FIELD = re.compile(r"^\s+(pages free|min|low|high|spanned|present|managed)\s+([0-9]{1,15})$")
_PROTECTION = re.compile(r"^\s+protection: \(([0-9, ]{1,200})\)$")
_SYSCTL = re.compile(r"^sysctl (min_free_kbytes|watermark_scale_factor|watermark_boost_factor|lowmem_reserve_ratio)"
                     r" ([0-9 \t]{1,100})$")
MAX_ZONES = 16


def zone_reserves(text: str) -> dict | None:
    """{'zones': {name: {managed, min, low, high, protection: [..]} in KiB}, 'sysctl': {...}} from the
    probe's zoneinfo section (pages of 4 KiB), or None if there is none."""
    zones: dict[str, dict] = {}
    current = None
    sysctl: dict = {}
    for line in text.splitlines()[:2000]:
        line = line[:300]
        if m := _ZONE.match(line):
            name = m.group(2) if m.group(1) == "0" else f"{m.group(2)}@{m.group(1)}"
            current = zones.setdefault(name, {}) if len(zones) < MAX_ZONES else None
        elif current is not None and (m := _FIELD.match(line)):
            key = m.group(1).replace("pages free", "free")
            if key not in current:  # the zone's own line, not a per-CPU one
                current[key] = int(m.group(2)) * 4
        elif current is not None and (m := _PROTECTION.match(line)):
            current["protection"] = [int(x) * 4 for x in re.findall(r"[0-9]{1,15}", m.group(1))][:8]
        elif m := _SYSCTL.match(line):
            values = [int(x) for x in re.findall(r"[0-9]{1,15}", m.group(2))][:8]
            sysctl[m.group(1)] = values if m.group(1) == "lowmem_reserve_ratio" else (values[0] if values else None)
    zones = {k: v for k, v in zones.items() if v.get("managed")}
    if not zones:
        return None
    return {"zones": zones, "sysctl": sysctl}


# --- a full system, read once it has settled --------------------------------------------------------
# The kernel log's lines that itemize() reads. The probe greps its own dmesg for exactly these
# (guests/probe.py's INIT_SCRIPT; a test holds the two together); a full system's log is filtered here.
LOG_PATTERN = (r"memblock_(alloc|reserve|phys_alloc|phys_free|free|remove)|Memory: [0-9]+K/|Freeing|BIOS-e820|"
               r"e820: (update|remove)|Xen: \[mem|xen_memory_setup|Released [0-9]+ page|Remapped [0-9]+ page|p2m")
SYMBOLS_PATTERN = r" (_text|__end_of_kernel_reserve|__bss_stop)$"
SYSCTLS = ("min_free_kbytes", "watermark_scale_factor", "watermark_boost_factor", "lowmem_reserve_ratio")
MAX_LOG_LINES = 100_000


def system_set_aside(log: str, symbols: str, zoneinfo: str, sysctls: str, memory_kib: int) -> dict:
    """A full system's set-aside and reserves from what it gives once it has settled: its kernel log
    (`dmesg`, booted with memblock=debug), the kernel's extent from /proc/kallsyms, /proc/zoneinfo and
    the watermark sysctls (one value per line, in SYSCTLS' order).

    {'found': itemize()'s answer or None, 'memtotal_boot_kib': N or None, 'zone_reserves': ... or None,
    'notes': [...]}. A system's balloon starts inflating before anything can log in, so its MemTotal
    at boot is the kernel's own total (memory minus what the Memory: line reserved, plus what the
    kernel handed back); the zones are read settled, their watermarks and protection are the boot's
    (the balloon moves neither), their free pages are the settled system's."""
    wanted = re.compile(LOG_PATTERN)
    lines = [line for line in log.splitlines()[:MAX_LOG_LINES] if wanted.search(line[:400])][:MAX_LINES]
    symbol_re = re.compile(r"^[0-9a-f]{16} [A-Za-z]" + SYMBOLS_PATTERN)
    lines += ["kallsyms " + s.strip() for s in symbols.splitlines()[:40] if symbol_re.match(s.strip())]
    notes = []
    found = itemize("\n".join(lines), memory_kib)
    if found is None:
        notes.append("the kernel's Memory: line was no longer in its log: the set-aside is not itemized")
    elif not any(_E820.search(line) or _XEN_MAP.search(line) for line in lines):
        notes.append("the start of the kernel's log (its memory map) had been overwritten before it was read")
    values = [v.strip() for v in sysctls.splitlines()]
    sysctl_lines = [f"sysctl {name} {value}" for name, value in zip(SYSCTLS, values)]
    reserves = zone_reserves("\n".join(zoneinfo.splitlines()[:2000] + sysctl_lines))
    if reserves is not None:
        reserves["read"] = "settled"
    memtotal = memory_kib - found["set_aside_kib"] if found else None
    return {"found": found, "memtotal_boot_kib": memtotal, "zone_reserves": reserves, "notes": notes}
