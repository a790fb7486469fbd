"""make bench-sweep: wall time of a sweep in parallel slots vs. the same points one at a time.

Prints, from one run: the wall time with the automatic slots, the ratio of that wall time to the
ideal (sum of per-point durations / slots), the wall time with --jobs 1, and the speed-up.
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

MANIFEST = """\
experiment: bench
hosts: [{{name: local, uri: embedded, domain_type: {domain_type}}}]
guests: [{{name: debian, kernel: host}}]
sweep: {{memory: [{memory}], current_memory: [1024 MiB], repeats: 1}}
timeouts: {{stable: 4s}}
post: {{slug: bench, title: bench, content: post.md}}
"""


def sweep(manifest: Path, results: Path, env: dict, jobs: int | None) -> tuple[float, list[dict]]:
    args = [sys.executable, "-m", "generator", "sweep", str(manifest), "--results", str(results)]
    if jobs:
        args += ["--jobs", str(jobs)]
    t0 = time.monotonic()
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if out.returncode != 0:
        sys.exit(f"bench-sweep: sweep failed:\n{out.stderr}")
    recs = [json.loads(p.read_text()) for p in results.rglob("*.json")]
    return wall, recs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--memory", default="1 GiB, 2 GiB, 4 GiB, 8 GiB", help="memory sizes to sweep")
    ap.add_argument("--domain-type", default="qemu", help="domain type (default qemu: no canary)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mbbench-") as tmp:
        tmp = Path(tmp)
        manifest = tmp / "bench" / "experiment.yaml"
        manifest.parent.mkdir()
        manifest.write_text(MANIFEST.format(memory=args.memory, domain_type=args.domain_type))
        (manifest.parent / "post.md").write_text("bench\n")
        env = dict(os.environ, MEMBALLOON_CACHE=str(ROOT / ".cache"))
        slots = os.cpu_count() or 1
        wall_par, recs = sweep(manifest, tmp / "par", env, None)
        wall_seq, recs_seq = sweep(manifest, tmp / "seq", env, 1)
    per_point = [r["durations"]["total_s"] for r in recs]
    ideal = sum(per_point) / slots
    print(f"points: {len(recs)} (memory {args.memory}; currentMemory 1024 MiB; domain type {recs[0]['domain_type']})")
    print(f"slots (auto, = cores): {slots}")
    print(f"per-point duration, parallel run: median {statistics.median(per_point):.1f} s, "
          f"sum {sum(per_point):.1f} s")
    print(f"per-point duration, sequential run: median "
          f"{statistics.median(r['durations']['total_s'] for r in recs_seq):.1f} s")
    print(f"sweep wall time, {slots} slots: {wall_par:.1f} s")
    print(f"  ratio wall / (sum of point durations / slots): {wall_par / ideal:.2f}  (1.00 = no overhead)")
    print(f"sweep wall time, one at a time (--jobs 1): {wall_seq:.1f} s")
    print(f"  speed-up of {slots} slots over one at a time: {wall_seq / wall_par:.2f}x")
    statuses = sorted({r["status"] for r in recs + recs_seq})
    print(f"statuses: {', '.join(statuses)}")


if __name__ == "__main__":
    main()
