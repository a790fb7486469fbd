"""What a guest's kernel sets aside, from the kernel's own sizing rules (one law per item), with the
few constants of each rule fitted per kernel and domain type from the itemized records.

The set-aside is `memory` minus MemTotal at boot (guests/setaside.py itemizes it from the kernel's
log). Each item follows one rule of the kernel; the rule is written here once, with the source it
follows (Linux 6.1 unless said):

- page descriptors: one `struct page` (64 bytes) per 4 KiB page of the RAM present at boot, in the
  vmemmap (mm/sparse-vmemmap.c, `__populate_section_memmap` from `sparse_init_nid`), plus the
  sections' usemaps and roots (mm/sparse.c, `sparse_init`): 16 MiB per GiB and a little more;
  the little more is fitted (a constant and KiB per GiB).
- hash tables: the dentry and inode caches' hash tables (fs/dcache.c `dcache_init_early`, fs/inode.c
  `inode_init_early`), sized by `alloc_large_system_hash` (mm/page_alloc.c): one 8-byte bucket per
  2^13 (dentry) or 2^14 (inode) bytes of the kernel's pages, the scale raised by one for every
  factor of 4 above 64 GiB (ADAPT_SCALE), then rounded up to a power of two and capped at 1/16 of
  memory. So they step: 12 and 24 MiB at 6 and 12 GiB, not the 9 and 18 a line gives, and they stop
  growing from 64 to 128 GiB.
- bounce buffer: 64 MiB of swiotlb slabs and their bookkeeping (kernel/dma/swiotlb.c
  `swiotlb_init_remap`), set up once the guest may have RAM above 4 GiB (arch/x86/kernel/
  pci-dma.c `pci_swiotlb_detect`: max_possible_pfn above 4 GiB). A step, not a slope. QEMU's `pc`
  machine keeps up to 3.5 GiB of RAM below 4 GiB and puts the rest above (hw/i386/pc_piix.c), and
  hotplug memory (virtio-mem, DIMMs) lives above 4 GiB; a Xen PV guest sets none up. Its size is
  fitted (the records: 64.75 MiB on 6.1 and 6.12, 64.4 on 5.10).
- page tables: the direct map's page-table pages (arch/x86/mm/init_64.c
  `kernel_physical_mapping_init`): a constant and KiB per GiB, fitted.
- kernel image, per-CPU areas, firmware and memory-map holes, other boot allocations: constants
  of the kernel and the machine, fitted; memory a hotplug guest can plug later is not RAM at
  boot and counts as a hole.

A Xen PV guest is built with currentMemory populated, and its kernel sizes its memory map for at most
ten times that much more (arch/x86/xen/setup.c `xen_memory_setup`, EXTRA_MEM_RATIO), never beyond
memory. What lies beyond the map is set aside whole; the map's unpopulated part is reserved at boot;
the kernel's own reservations follow the map: 64 B of page descriptor per page, the hash tables (of
the map on 5.10 and 6.1, of the populated memory on 6.12: the fit picks whichever the records show),
and a fitted line (its page lists, page tables and the rest: about 4.1 MiB per GiB of map on all three).

The page allocator's reserve against an ordinary allocation (what predict's survival condition
takes off) follows the watermark rules of mm/page_alloc.c: `min_free_kbytes` is
sqrt(16 x lowmem KiB) (`init_per_zone_wmark_min`), raised to khugepaged's recommendation of
2 + 3 x 3 pageblocks of 2 MiB per populated zone (mm/khugepaged.c
`set_recommended_min_free_kbytes`, at most 5% of memory); each zone's min watermark is its share by
managed pages; a lower zone keeps `protection` of the higher zones' managed pages divided by
`lowmem_reserve_ratio` (256 for DMA and DMA32). The zones' sizes follow from MemTotal at boot (the
set-aside's law) and two constants fitted per kernel: what DMA and, once there is RAM above 4 GiB,
DMA32 manage.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from . import hypervisors
from .guests import setaside as sa
from .kinds import kind_of_record
from .results import as_record

KIB_PER_GIB = 1024 * 1024
PAGE_KIB = 4
STRUCT_PAGE_BYTES = 64                    # sizeof(struct page) on x86_64
PC_BELOW_4G_MIB = 3584                    # QEMU pc: RAM up to 3.5 GiB stays below 4 GiB
HASHES = (("dentry", 13, 8), ("inode", 14, 8))  # (table, scale, bucket bytes): alloc_large_system_hash
ADAPT_SCALE_PAGES = (64 << 30) // 4096    # ADAPT_SCALE_BASE in pages
TOLERANCE_KIB = 1024                      # a law and a record may differ by this much per item
CONSTANT_ITEMS = (sa.KERNEL, sa.PER_CPU, sa.FIRMWARE, sa.OTHER, sa.UNEXPLAINED, sa.INITRAMFS)
LOWMEM_RESERVE_RATIO = (256, 256, 32)     # DMA, DMA32, Normal (mm/page_alloc.c, sysctl_lowmem_reserve_ratio)


def roundup_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def kernel_pages(present_mib: float) -> int:
    """The pages the kernel counts as its own when it sizes hash tables (nr_kernel_pages): the RAM
    present less its page descriptors and the first MiB. Near a power of two this decides which
    power the tables round up to; elsewhere the exact figure does not matter."""
    pages = int(present_mib * 256)
    return pages - pages * STRUCT_PAGE_BYTES // 4096 - 256


def hash_tables_kib(present_mib: float) -> float:
    """The dentry and inode hash tables by alloc_large_system_hash's rule (see the module's doc)."""
    total = 0.0
    for _name, scale, bucket in HASHES:
        entries = -(-kernel_pages(present_mib) // 256) * 256  # round up to a MiB of pages
        adapt = ADAPT_SCALE_PAGES
        while adapt < entries:
            scale += 1
            adapt <<= 2
        entries = entries >> (scale - 12) if scale > 12 else entries << (12 - scale)
        entries = roundup_pow2(entries)
        cap = int(present_mib * 256) * 4096 // 16 // bucket
        total += min(entries, cap) * bucket / 1024
    return total


def size_class(present_mib: float) -> int:
    """Sizes the kernel's power-of-two tables treat alike (the dentry table's entries): used for what
    the guest has in use at boot, whose growth with memory is such tables allocated after boot."""
    return roundup_pow2(kernel_pages(present_mib) >> 1)


XEN_EXTRA_MEM_RATIO = 10                  # arch/x86/xen/setup.c: the map grows to 10 x the starting memory


@dataclass(frozen=True)
class Guest:
    """What the kernel sizes its bookkeeping for."""

    memory_mib: int                 # the ceiling (libvirt's memory)
    present_mib: int                # RAM present at boot: memory, or currentMemory for a hotplug guest
    above_4g: bool                  # may have RAM above 4 GiB: the bounce buffer
    xen_pv_current_mib: int = 0     # a Xen PV guest: the memory it is built with (0: not one)

    @property
    def xen_map_mib(self) -> int:
        """A Xen PV guest's memory map: what it starts with plus at most ten times that more
        (`xen_memory_setup`, EXTRA_MEM_RATIO), never beyond memory. The rest no map describes."""
        return min(self.memory_mib, (1 + XEN_EXTRA_MEM_RATIO) * self.xen_pv_current_mib)


def guest_of(memory_mib: int, current_mib: int, memory_model: str, domain_type: str) -> Guest:
    hv = hypervisors.for_domain_type(domain_type)
    hotplug = memory_model in ("virtio-mem", "dimm") and memory_mib > current_mib
    present = current_mib if hotplug else memory_mib
    if not hv.inflates_after_boot:          # Xen PV: no swiotlb in an unprivileged guest
        return Guest(memory_mib, present, False, current_mib)
    return Guest(memory_mib, present, hotplug or present > PC_BELOW_4G_MIB)


def _fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(constant, per GiB) of a least-squares line: only for items that grow page by page."""
    xs = [x for x, _ in points]
    if len(set(xs)) < 2:
        return (statistics.fmean(y for _, y in points), 0.0) if points else (0.0, 0.0)
    mx, my = statistics.fmean(xs), statistics.fmean(y for _, y in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


@dataclass
class Laws:
    """The fitted constants of one kernel on one domain type, and the laws that use them."""

    domain_type: str
    kernel: str
    records: int = 0
    page_descriptors: tuple = (0.0, 0.0)   # KiB beyond 64 B per page: (constant, per GiB)
    page_tables: tuple = (0.0, 0.0)        # KiB: (constant, per GiB)
    bounce_kib: float = 0.0                # the swiotlb step (0: never seen)
    constants: dict = field(default_factory=dict)   # item -> KiB
    dma_managed_kib: float | None = None
    dma32_managed_kib: float | None = None  # once there is RAM above 4 GiB
    used: dict = field(default_factory=dict)        # size class -> (memory MiB, KiB in use at boot)
    xen_unpopulated_kib: float = 0.0       # Xen PV: the map's unpopulated part beyond (map - start)
    xen_reservations: tuple = (0.0, 0.0)   # Xen PV: its image and other boot reservations beyond 64 B per
                                           # page and the hash tables: (constant, per GiB of map)
    xen_hash_by_map: bool = True           # Xen PV: hash tables sized by the map (5.10, 6.1) or by the
                                           # memory populated at boot (6.12): whichever the records show

    # -- the set-aside ------------------------------------------------------------------------------
    def items(self, g: Guest) -> dict[str, float]:
        """KiB per item of what the kernel sets aside at boot for this guest."""
        if g.xen_pv_current_mib:
            return self._xen_pv_items(g)
        gib = g.present_mib / 1024
        c0, c1 = self.page_descriptors
        out = {sa.PAGE_DESCRIPTORS: g.present_mib * 1024 * STRUCT_PAGE_BYTES / 4096 + c0 + c1 * gib,
               sa.HASH_TABLES: hash_tables_kib(g.present_mib),
               sa.BOUNCE_BUFFER: self.bounce_kib if g.above_4g else 0.0,
               sa.PAGE_TABLES: self.page_tables[0] + self.page_tables[1] * gib}
        for name, kib in self.constants.items():
            out[name] = kib
        out[sa.FIRMWARE] = self.constants.get(sa.FIRMWARE, 0.0) + (g.memory_mib - g.present_mib) * 1024
        return out

    def _xen_pv_items(self, g: Guest) -> dict[str, float]:
        """A Xen PV guest, itemized as its records are (from the kernel's totals and Xen's map): what
        lies beyond the map, the map's unpopulated part, and the kernel's own reservations as one item,
        which follow the map: 64 B of page descriptor per page and the hash tables' power-of-two rule,
        plus a fitted line (its page lists, page tables and the rest)."""
        map_mib = g.xen_map_mib
        c0, c1 = self.xen_reservations
        out = {sa.XEN_BEYOND: (g.memory_mib - map_mib) * 1024.0,
               sa.XEN_UNPOPULATED: (map_mib - g.xen_pv_current_mib) * 1024.0 + self.xen_unpopulated_kib,
               sa.NOT_ITEMIZED: (map_mib * 1024 * STRUCT_PAGE_BYTES / 4096 + self._xen_hash_kib(g)
                                 + c0 + c1 * map_mib / 1024)}
        for name, kib in self.constants.items():
            out[name] = kib
        return out

    def _xen_hash_kib(self, g: Guest) -> float:
        return hash_tables_kib(g.xen_map_mib if self.xen_hash_by_map else g.xen_pv_current_mib)

    def set_aside_kib(self, g: Guest) -> float:
        return sum(self.items(g).values())

    def memtotal_boot_kib(self, g: Guest) -> float:
        return g.memory_mib * 1024 - self.set_aside_kib(g)

    # -- the page allocator's reserve ------------------------------------------------------------------
    def zones(self, g: Guest) -> dict[str, float] | None:
        """Managed KiB per zone at boot: DMA and (with RAM above 4 GiB) DMA32 are constants of the
        machine; the rest of MemTotal is DMA32 below 4 GiB, Normal above."""
        if self.dma_managed_kib is None:
            return None
        total = self.memtotal_boot_kib(g) - (g.memory_mib - g.present_mib) * 1024
        if g.present_mib > PC_BELOW_4G_MIB:
            if self.dma32_managed_kib is None:
                return None
            return {"DMA": self.dma_managed_kib, "DMA32": self.dma32_managed_kib,
                    "Normal": total - self.dma_managed_kib - self.dma32_managed_kib}
        return {"DMA": self.dma_managed_kib, "DMA32": total - self.dma_managed_kib}

    def reserve_kib(self, g: Guest) -> float | None:
        """min watermarks plus the lower zones' protection against the highest zone (the rules in the
        module's doc), each capped at the zone's size: predict.reserve_kib of the zones it would have."""
        zones = self.zones(g)
        if zones is None:
            return None
        total = sum(zones.values())
        lowmem_kib = total
        min_free = max(128, min(262144, math.isqrt(int(lowmem_kib * 16))))
        populated = sum(1 for v in zones.values() if v > 0)
        recommended = 512 * populated * (2 + 3 * 3) * PAGE_KIB
        recommended = min(recommended, total // PAGE_KIB // 20 * PAGE_KIB)
        min_free = max(min_free, recommended)
        names = list(zones)
        out = 0.0
        for i, name in enumerate(names):
            zmin = min_free * zones[name] / total
            above = sum(zones[n] for n in names[i + 1:])
            guard = above / LOWMEM_RESERVE_RATIO[i] if i < len(names) - 1 else 0.0
            out += min(zones[name], zmin + guard)
        return out

    def used_kib(self, g: Guest) -> tuple[float | None, str]:
        """What the guest has in use at boot (the probe's busybox and the kernel's own allocations after
        boot, whose growth is tables sized in powers of two): the value measured in the same size class,
        else the nearest measured class below (above if none)."""
        if not self.used:
            return None, "not measured"
        cls = size_class(g.present_mib)
        if cls in self.used:
            return self.used[cls][1], "measured in the same power-of-two class"
        below = [c for c in self.used if c < cls]
        pick = max(below) if below else min(self.used)
        return self.used[pick][1], f"the nearest class measured ({self.used[pick][0]:,} MiB)"


def fit(records: list, domain_type: str, kernel: str | tuple) -> Laws | None:
    """The laws' constants for one kernel (or releases of one series, a tuple) on one domain type, from
    its itemized records (None if it has none)."""
    kernels = (kernel,) if isinstance(kernel, str) else tuple(kernel)
    kernel = kernels[-1] if kernels else ""
    from .manifest import at_defaults

    # the rules are a guest's with libvirt's default CPU model: a CPU that offers more (5-level paging)
    # sizes some bookkeeping differently, and is its own experiment
    mine = [r for r in (as_record(x) for x in records)
            if r.domain_type == domain_type and r.guest_kernel in kernels and r.status in ("ok", "oom", "panic")
            and isinstance(r.memory_mib, int) and isinstance(r.current_memory_mib, int)
            and at_defaults(r, but=LAW_FACTORS)]
    itemized = [r for r in mine if isinstance(r.set_aside_kib, dict) and r.set_aside_kib]
    if not itemized:
        return None
    laws = Laws(domain_type, kernel, len(itemized))
    if not hypervisors.for_domain_type(domain_type).inflates_after_boot:
        return _fit_xen_pv(laws, itemized, domain_type)
    balloon = [r for r in itemized if (r.memory_model or "balloon") == "balloon"]
    base = balloon or itemized
    pd, pt = [], []
    for r in base:
        g = guest_of(r.memory_mib, r.current_memory_mib, r.memory_model or "balloon", domain_type)
        gib = g.present_mib / 1024
        pd.append((gib, r.set_aside_kib.get(sa.PAGE_DESCRIPTORS, 0) - g.present_mib * 1024 * STRUCT_PAGE_BYTES / 4096))
        pt.append((gib, r.set_aside_kib.get(sa.PAGE_TABLES, 0)))
    laws.page_descriptors = _fit_line(pd)
    laws.page_tables = _fit_line(pt)
    stepped = [r.set_aside_kib.get(sa.BOUNCE_BUFFER, 0) for r in itemized if r.set_aside_kib.get(sa.BOUNCE_BUFFER)]
    laws.bounce_kib = statistics.median(stepped) if stepped else 0.0
    for name in CONSTANT_ITEMS:
        values = [r.set_aside_kib.get(name, 0) for r in base]
        if name == sa.FIRMWARE:  # memory a hotplug guest may plug later is a hole of its own
            values = [r.set_aside_kib.get(name, 0) for r in balloon] or [549.0]
        if any(values):
            laws.constants[name] = statistics.median(values)
    dma, dma32 = [], []
    used: dict[int, list] = {}
    for r in mine:
        zones = (r.zone_reserves or {}).get("zones") or {}
        if (r.memory_model or "balloon") != "balloon" or not zones or not kind_of_record(r).bare:
            continue  # a full system's zones are read once it has settled: not what a boot has in use
        if zones.get("DMA", {}).get("managed"):
            dma.append(zones["DMA"]["managed"])
        if zones.get("Normal", {}).get("managed") and zones.get("DMA32", {}).get("managed"):
            dma32.append(zones["DMA32"]["managed"])
        free = [z.get("free") for z in zones.values()]
        if isinstance(r.memtotal_boot_kib, int) and free and None not in free:
            used.setdefault(size_class(r.memory_mib), []).append((r.memory_mib, r.memtotal_boot_kib - sum(free)))
    laws.dma_managed_kib = statistics.median(dma) if dma else None
    laws.dma32_managed_kib = statistics.median(dma32) if dma32 else None
    laws.used = {c: (min(m for m, _ in v), statistics.median(u for _, u in v)) for c, v in used.items()}
    return laws


def _fit_xen_pv(laws: Laws, itemized: list, domain_type: str) -> Laws:
    """A Xen PV kernel's constants: the holes, the unpopulated part's offset, and the line of its image
    and other reservations against the size of its map."""
    offsets, fits = [], []
    for by_map in (True, False):
        laws.xen_hash_by_map = by_map
        rest = []
        for r in itemized:
            g = guest_of(r.memory_mib, r.current_memory_mib, "balloon", domain_type)
            rest.append((g.xen_map_mib / 1024, r.set_aside_kib.get(sa.NOT_ITEMIZED, 0) + r.set_aside_kib.get(sa.KERNEL, 0)
                         - g.xen_map_mib * 1024 * STRUCT_PAGE_BYTES / 4096 - laws._xen_hash_kib(g)))
        line = _fit_line(rest)
        worst = max(abs(y - line[0] - line[1] * x) for x, y in rest)
        fits.append((worst, not by_map, line))
    _worst, by_populated, laws.xen_reservations = min(fits)
    laws.xen_hash_by_map = not by_populated
    for r in itemized:
        g = guest_of(r.memory_mib, r.current_memory_mib, "balloon", domain_type)
        offsets.append(r.set_aside_kib.get(sa.XEN_UNPOPULATED, 0) - (g.xen_map_mib - g.xen_pv_current_mib) * 1024)
    laws.xen_unpopulated_kib = statistics.median(offsets)
    # the image is part of the line: whether a record splits it off depends on reading the kernel's symbols
    values = [r.set_aside_kib.get(sa.FIRMWARE, 0) for r in itemized]
    if any(values):
        laws.constants[sa.FIRMWARE] = statistics.median(values)
    return laws


def series_of(release: str) -> str:
    """'6.1' of '6.1.0-56-amd64': releases of one series size their bookkeeping alike."""
    parts = (release or "").split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 and parts[0].isdigit() else release or ""


def disagreements(records: list, laws_by: dict) -> list[dict]:
    """Every itemized record whose item differs from its law by more than TOLERANCE_KIB, and every
    booted record whose whole set-aside does (records of 64 and 128 GiB are checked in total)."""
    from .manifest import at_defaults

    out = []
    for r in (as_record(x) for x in records):
        laws = laws_by.get((r.domain_type, series_of(r.guest_kernel)))
        if laws is None or not isinstance(r.memtotal_boot_kib, int) or not isinstance(r.memory_mib, int):
            continue
        if not at_defaults(r, but=LAW_FACTORS):  # the rules are those of libvirt's default CPU model
            continue
        g = guest_of(r.memory_mib, r.current_memory_mib, r.memory_model or "balloon", r.domain_type)
        want = laws.items(g)
        where = f"{r.get('experiment')}/{r.host}/{r.guest} memory {r.memory_mib} MiB repeat {r.repeat}"
        if isinstance(r.set_aside_kib, dict) and r.set_aside_kib:
            have = dict(r.set_aside_kib)
            if sa.NOT_ITEMIZED in have:
                # booted without memblock=debug (Xen PV): where the image ends and the kernel's other
                # reservations begin depends on whether its symbols could be read, so the two are
                # compared together
                want = {**want, sa.NOT_ITEMIZED: want.get(sa.NOT_ITEMIZED, 0.0) + want.pop(sa.KERNEL, 0.0)}
                have[sa.NOT_ITEMIZED] += have.pop(sa.KERNEL, 0)
            for name in sorted(set(want) | set(have)):
                diff = want.get(name, 0.0) - have.get(name, 0)
                if abs(diff) > TOLERANCE_KIB:
                    out.append({"record": where, "item": name, "law_kib": round(want.get(name, 0.0)),
                                "record_kib": have.get(name, 0), "diff_kib": round(diff)})
        total = r.memory_mib * 1024 - r.memtotal_boot_kib
        diff = sum(want.values()) - total
        if abs(diff) > TOLERANCE_KIB:
            out.append({"record": where, "item": "set-aside", "law_kib": round(sum(want.values())),
                        "record_kib": total, "diff_kib": round(diff)})
    return out


def all_laws(records: list) -> dict[tuple[str, str], Laws]:
    """Laws for every (domain type, kernel series) with itemized records."""
    releases: dict[tuple[str, str], set] = {}
    for r in (as_record(x) for x in records):
        if r.domain_type and r.guest_kernel:
            releases.setdefault((r.domain_type, series_of(r.guest_kernel)), set()).add(r.guest_kernel)
    out = {}
    for key, kernels in sorted(releases.items()):
        laws = fit(records, key[0], tuple(sorted(kernels)))
        if laws is not None:
            out[key] = laws
    return out


# The factors the rules cover (every other one at its default): the sizes and how memory is given. The CPU
# model is not among them: `maximum` lets a kernel started through its decompressor use 5-level paging.
LAW_FACTORS = ("memory_mib", "current_memory_mib", "memory_model", "autodeflate", "free_page_reporting")


def marginal_per_gib(laws: Laws, low_mib: int = 4096, high_mib: int = 32768) -> float:
    """What one more GiB of memory costs, in MiB: the set-aside's growth between two powers of two
    (where the hash tables have doubled as often as memory), above the bounce buffer's step."""
    lo = laws.set_aside_kib(Guest(low_mib, low_mib, low_mib > PC_BELOW_4G_MIB and laws.bounce_kib > 0))
    hi = laws.set_aside_kib(Guest(high_mib, high_mib, high_mib > PC_BELOW_4G_MIB and laws.bounce_kib > 0))
    return (hi - lo) / 1024 / ((high_mib - low_mib) / 1024)


# --- the rules as data: shipped inside the package, so that predict answers outside a checkout ---------
SHIPPED = "data/laws.json"
SHIPPED_FORMAT, SHIPPED_VERSION = "memballoon-laws", 1


def export(records: list, labels: dict[str, str]) -> dict:
    """Every fitted law with what a reader asks it by: the guests (name, label) that ran its kernels, its
    kernels and the sizes measured. Sorted, so equal records give equal bytes."""
    records = [as_record(r) for r in records]
    out = []
    for (dtype, series), laws in sorted(all_laws(records).items()):
        mine = [r for r in records if r.domain_type == dtype and series_of(r.guest_kernel) == series
                and isinstance(r.memtotal_boot_kib, int) and kind_of_record(r).bare]
        if not mine or not hypervisors.for_domain_type(dtype).inflates_after_boot:
            continue
        guests = sorted({r.guest for r in mine})
        out.append({"domain_type": dtype, "series": series,
                    "kernels": sorted({r.guest_kernel for r in mine}),
                    "guests": [{"name": g, "label": labels.get(g, g)} for g in guests],
                    "measured_sizes": sorted({r.memory_mib for r in mine}),
                    "laws": _laws_dict(laws)})
    return {"format": SHIPPED_FORMAT, "version": SHIPPED_VERSION, "laws": out}


def _laws_dict(laws: Laws) -> dict:
    return {"domain_type": laws.domain_type, "kernel": laws.kernel, "records": laws.records,
            "page_descriptors": [round(v, 6) for v in laws.page_descriptors],
            "page_tables": [round(v, 6) for v in laws.page_tables], "bounce_kib": laws.bounce_kib,
            "constants": dict(sorted(laws.constants.items())), "dma_managed_kib": laws.dma_managed_kib,
            "dma32_managed_kib": laws.dma32_managed_kib,
            "used": {str(k): list(v) for k, v in sorted(laws.used.items())}}


def laws_of(d: dict) -> Laws:
    """A Laws from its exported form (checked: numbers where numbers are due)."""
    def num(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"not a number: {v!r}")
        return float(v)
    return Laws(str(d["domain_type"]), str(d["kernel"]), int(d["records"]),
                tuple(num(v) for v in d["page_descriptors"]), tuple(num(v) for v in d["page_tables"]),
                num(d["bounce_kib"]), {str(k): num(v) for k, v in d["constants"].items()},
                None if d["dma_managed_kib"] is None else num(d["dma_managed_kib"]),
                None if d["dma32_managed_kib"] is None else num(d["dma32_managed_kib"]),
                {int(k): (int(v[0]), num(v[1])) for k, v in d["used"].items()})


def shipped() -> dict | None:
    """The rules the package was built with (generator/data/laws.json), or None."""
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent / SHIPPED
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if doc.get("format") == SHIPPED_FORMAT and doc.get("version") == SHIPPED_VERSION else None
