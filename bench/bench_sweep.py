"""make bench-sweep: what a point costs against the physics, measured side by side in one run.

1. The floor: a bare qemu-system-x86_64 boot of the same probe (compressed kernel, no libvirt, no
   waits) that prints MemTotal and powers off. Median of 5.
2. Points at 1 GiB and 16 GiB (currentMemory 1 GiB) through the real sweep, one at a time, 3 each:
   their phases, the 1 GiB point against the floor (target <= 1.0), and the 16 GiB point's
   overhead beyond its boot and its balloon's inflation (target <= 2 s).
3. The default experiment's points before the larger-than-host sizes (both kernels, memory 1-16
   GiB, 3 repeats: 30 points) with the automatic slots: the sum of their durations against the
   same 30 points as archived with the previous probe (target <= 0.5).
4. Slots: 4 points (1-8 GiB) in parallel slots and one at a time.
5. The guest's own share of inflation: 32 GiB points with the stock command line and with
   `init_on_alloc=0` (Debian's kernels zero every page they allocate, the balloon's included, and
   under TCG that zeroing is emulated), one at a time, alternating, 3 each: the balloon's
   inflation time of each and their ratio, and what the guests see, which must be the same.

6. The cost of itemizing: bare QEMU boots of the probe at 4 GiB in measure mode (no balloon to
   inflate, hold 0) with and without `memblock=debug`, alternating, 5 each: the median wall time of
   each, their difference, and the log lines the probe printed (the itemization's input).

`--parts 5` runs only part 5 (any comma-separated list of parts).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generator.guests import probe as probe_mod  # noqa: E402
from generator.cli import PHASES  # noqa: E402

# The 30 default points as measured with the probe before issue 9 (fixed wait, bzImage boot).
BASELINE_COMMIT = "4ce0b2b"
BASELINE_SIZES = (1024, 2048, 4096, 8192, 16384)

MANIFEST = """\
experiment: bench
hosts: [{{name: local, uri: embedded, domain_type: qemu}}]
guests: {guests}
sweep: {{memory: [{memory}], current_memory: [1024 MiB], repeats: {repeats}}}
timeouts: {{stable: 4s}}
post: {{slug: bench, title: bench, content: post.md}}
"""
HOST = "[{name: debian, kernel: host}]"
NO_INIT = "[{name: debian, kernel: host, cmdline: init_on_alloc=0}]"
BOTH = "[{name: debian, kernel: host}, {name: trixie, kernel: 'debian:trixie'}]"


def floor(cache: Path, runs: int = 5) -> list[float]:
    """Bare QEMU: the probe's bzImage and initramfs, canary mode (print MemTotal, power off)."""
    built = probe_mod.build("host", "", cache)
    times = []
    for _ in range(runs):
        t0 = time.monotonic()
        out = subprocess.run(
            ["qemu-system-x86_64", "-accel", "tcg", "-M", "pc", "-m", "1024", "-smp", "1", "-display", "none",
             "-no-reboot", "-serial", "stdio", "-monitor", "none", "-kernel", str(built.kernel),
             "-initrd", str(built.initrd), "-append",
             "console=ttyS0 loglevel=4 panic=-1 rdinit=/init memballoon.mode=canary"],
            capture_output=True, text=True, timeout=120)
        times.append(time.monotonic() - t0)
        if "canary-ok" not in out.stdout or "boot-memtotal-kib" not in out.stdout:
            sys.exit(f"bench-sweep: the bare QEMU boot did not report MemTotal:\n{out.stdout[-2000:]}{out.stderr}")
    return times


def sweep(tmp: Path, name: str, guests: str, memory: str, repeats: int, env: dict,
          jobs: int | None) -> tuple[float, list[dict]]:
    manifest = tmp / name / "experiment.yaml"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(MANIFEST.format(guests=guests, memory=memory, repeats=repeats))
    (manifest.parent / "post.md").write_text("bench\n")
    results = tmp / f"{name}-results"
    args = [sys.executable, "-m", "generator", "sweep", str(manifest), "--results", str(results)]
    if jobs:
        args += ["--jobs", str(jobs)]
    t0 = time.monotonic()
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if out.returncode != 0:
        sys.exit(f"bench-sweep: sweep failed:\n{out.stderr}")
    recs = [json.loads(p.read_text()) for p in results.rglob("*.json")]
    bad = [r for r in recs if r["status"] != "ok"]
    if bad:
        sys.exit(f"bench-sweep: {len(bad)} point(s) failed: {bad[0]['status']}: {bad[0]['reason']}")
    return wall, recs


def baseline_sum() -> tuple[float, int]:
    """Sum of total_s of the archived default points (1-16 GiB, both kernels, 3 repeats)."""
    total, n = 0.0, 0
    for guest in ("debian", "trixie"):
        for memory in BASELINE_SIZES:
            for repeat in (1, 2, 3):
                path = (f"experiments/memory-ballooning/results/local/{guest}/"
                        f"memory-{memory}MiB-current-1024MiB-r{repeat}.json")
                out = subprocess.run(["git", "show", f"{BASELINE_COMMIT}:{path}"], cwd=ROOT, capture_output=True,
                                     text=True)
                if out.returncode != 0:
                    sys.exit(f"bench-sweep: cannot read the baseline record {path} at {BASELINE_COMMIT} "
                             "(needs the project's git history)")
                total += json.loads(out.stdout)["durations"]["total_s"]
                n += 1
    return total, n


def phase_medians(recs: list[dict]) -> str:
    parts = []
    for name in PHASES:
        values = [r["phases"].get(f"{name}_s") for r in recs if r["phases"].get(f"{name}_s") is not None]
        if values:
            parts.append(f"{name} {statistics.median(values):.2f}")
    return ", ".join(parts)


def overhead(r: dict) -> float:
    """Wall time beyond the physics: the boot (firmware, kernel to init) and the balloon's inflation."""
    p = r["phases"]
    return r["durations"]["total_s"] - p.get("firmware_s", 0) - p.get("kernel_to_init_s", 0) - p.get("inflation_s", 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-default", action="store_true", help="leave out part 3 (the 30 default points)")
    ap.add_argument("--parts", default="1,2,3,4,5,6", help="which parts to run, e.g. 5 or 1,2 (default: all)")
    args = ap.parse_args()
    parts = {int(x) for x in args.parts.split(",") if x.strip().isdigit()}
    if args.skip_default:
        parts.discard(3)
    cache = ROOT / ".cache"
    env = dict(os.environ, MEMBALLOON_CACHE=str(cache))
    slots = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="mbbench-") as tmp:
        tmp = Path(tmp)
        env["MEMBALLOON_EMBED_ROOT"] = tempfile.mkdtemp(prefix="mbb-", dir="/tmp")
        if parts & {1, 2}:
            first_parts(tmp, cache, env)
        if 3 in parts:
            default_points(tmp, env, slots)
        if 4 in parts:
            slot_parts(tmp, env, slots)
        if 5 in parts:
            init_on_alloc(tmp, env)
        if 6 in parts:
            memblock_debug(cache)


def memblock_debug(cache: Path, runs: int = 5) -> None:
    built = probe_mod.build("host", "", cache)
    image, _ = built.boot_image("auto")
    base = ("console=ttyS0 loglevel=4 panic=-1 rdinit=/init memballoon.mode=measure memballoon.stable=1 "
            "memballoon.settle=5 memballoon.balloon_kib=0 memballoon.hold=0")
    times: dict[str, list[float]] = {"without": [], "with": []}
    lines: dict[str, int] = {}
    for _ in range(runs):
        for key, extra in (("without", ""), ("with", " memblock=debug")):
            t0 = time.monotonic()
            out = subprocess.run(
                ["qemu-system-x86_64", "-accel", "tcg", "-M", "pc", "-m", "4096", "-smp", "1", "-display", "none",
                 "-no-reboot", "-serial", "stdio", "-monitor", "none", "-kernel", str(image), "-initrd",
                 str(built.initrd), "-device", "virtio-balloon-pci", "-append", base + extra],
                capture_output=True, text=True, timeout=300)
            times[key].append(time.monotonic() - t0)
            if "@@MEMBALLOON done" not in out.stdout:
                sys.exit(f"bench-sweep: the probe did not finish:\n{out.stdout[-2000:]}")
            section = out.stdout.split("@@MEMBALLOON begin memblock")[1].split("@@MEMBALLOON end memblock")[0]
            lines[key] = len(section.strip().splitlines())
    a, b = statistics.median(times["without"]), statistics.median(times["with"])
    print(f"6. probe at 4 GiB, bare QEMU, median of {runs}: without memblock=debug {a:.2f} s "
          f"({', '.join(f'{t:.2f}' for t in times['without'])}), with {b:.2f} s "
          f"({', '.join(f'{t:.2f}' for t in times['with'])}); difference {b - a:+.2f} s ({b / a:.2f}x); "
          f"log lines printed {lines['without']} and {lines['with']}")


def init_on_alloc(tmp: Path, env: dict, runs: int = 3) -> None:
    stock, quick = [], []
    for i in range(runs):  # alternating, one at a time: both see the same machine
        stock += sweep(tmp, f"stock{i}", HOST, "32 GiB", 1, env, 1)[1]
        quick += sweep(tmp, f"noinit{i}", NO_INIT, "32 GiB", 1, env, 1)[1]
    seen = {(r["memtotal_settled_kib"], r["free_m"]["total"]) for r in stock + quick}
    a = statistics.median(r["phases"]["inflation_s"] for r in stock)
    b = statistics.median(r["phases"]["inflation_s"] for r in quick)
    ta = statistics.median(r["durations"]["total_s"] for r in stock)
    tb = statistics.median(r["durations"]["total_s"] for r in quick)
    def each(recs: list[dict]) -> str:
        return ", ".join(f"{r['phases']['inflation_s']:.1f}" for r in recs)
    same = f"the same in all {len(stock + quick)}" if len(seen) == 1 else f"DIFFERENT: {seen!r}"
    print(f"5. 32 GiB points, balloon inflation (guest's view), median of {runs}: stock {a:.1f} s ({each(stock)}), "
          f"init_on_alloc=0 {b:.1f} s ({each(quick)}); ratio {a / b:.2f}x")
    print(f"   whole point: stock {ta:.1f} s, init_on_alloc=0 {tb:.1f} s ({ta / tb:.2f}x); what the guests saw: {same}")
    if len(seen) != 1:
        sys.exit("bench-sweep: init_on_alloc=0 changed what the guest sees")


def first_parts(tmp: Path, cache: Path, env: dict) -> None:
    bare = floor(cache)
    fl = statistics.median(bare)
    print(f"1. floor: bare qemu-system-x86_64, bzImage, 1 GiB, prints MemTotal and powers off: "
          f"median {fl:.2f} s of {len(bare)} ({', '.join(f'{t:.2f}' for t in bare)})")
    _, small = sweep(tmp, "one", HOST, "1 GiB", 3, env, 1)
    _, large = sweep(tmp, "sixteen", HOST, "16 GiB", 3, env, 1)
    one = statistics.median(r["durations"]["total_s"] for r in small)
    print(f"2. 1 GiB point (pvh boot, through libvirt): median {one:.2f} s of 3; phases (medians, s): "
          f"{phase_medians(small)}")
    print(f"   ratio 1 GiB point / floor: {one / fl:.2f}  (target <= 1.0)")
    sixteen = statistics.median(r["durations"]["total_s"] for r in large)
    infl = statistics.median(r["phases"]["inflation_s"] for r in large)
    over = statistics.median(overhead(r) for r in large)
    print(f"   16 GiB point: median {sixteen:.2f} s of 3, of which inflation {infl:.2f} s; phases (medians, s): "
          f"{phase_medians(large)}")
    print(f"   16 GiB overhead beyond boot and inflation: median {over:.2f} s  (target <= 2 s); "
          f"beyond inflation alone: {sixteen - infl:.2f} s")


def default_points(tmp: Path, env: dict, slots: int) -> None:
    base, n = baseline_sum()
    wall, recs = sweep(tmp, "default", BOTH, ", ".join(f"{m // 1024} GiB" for m in BASELINE_SIZES), 3, env,
                       None)
    now = sum(r["durations"]["total_s"] for r in recs)
    print(f"3. default points (2 kernels x 1-16 GiB x 3 repeats = {len(recs)}): sum of point durations "
          f"{now:.0f} s, archived with the previous probe {base:.0f} s ({n} points, {BASELINE_COMMIT})")
    print(f"   ratio now / archived: {now / base:.2f}  (target <= 0.5); sweep wall time {wall:.0f} s "
          f"with {slots} slots")


def slot_parts(tmp: Path, env: dict, slots: int) -> None:
    wall_par, recs = sweep(tmp, "par", HOST, "1 GiB, 2 GiB, 4 GiB, 8 GiB", 1, env, None)
    wall_seq, recs_seq = sweep(tmp, "seq", HOST, "1 GiB, 2 GiB, 4 GiB, 8 GiB", 1, env, 1)
    per_point = [r["durations"]["total_s"] for r in recs]
    print(f"4. slots: 4 points (1-8 GiB), {slots} slots: wall {wall_par:.1f} s, sum of point durations "
          f"{sum(per_point):.1f} s; one at a time: wall {wall_seq:.1f} s")
    print(f"   ratio wall / (sum / slots): {wall_par / (sum(per_point) / slots):.2f}  (1.00 = no overhead); "
          f"speed-up over one at a time: {wall_seq / wall_par:.2f}x")


if __name__ == "__main__":
    main()
