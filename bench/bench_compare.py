"""make bench-compare: `compare` over two git revisions of 10,000 records each (target: under 5 s).

The synthetic experiment of bench-build (50 guests x 40 memory sizes x 5 currentMemory, one host)
is committed, then 5% of its readings move, 1% change status, and committed again; `compare OLD NEW`
runs as a whole command (Python start-up included), five times; the median is reported, with the
time of the same comparison against the working tree.
"""
from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_build import synthetic_project  # noqa: E402


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.org",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.org"}
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, env=env, check=True).stdout


def timed(cwd: Path, *args: str) -> tuple[float, str]:
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "generator", "compare", *args], cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return time.monotonic() - t0, out.stdout


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="mb-bench-compare-") as tmp:
        proj = synthetic_project(Path(tmp))
        files = sorted((proj / "experiments" / "synthetic" / "results").rglob("*.json"))
        git(proj, "init", "-q")
        git(proj, "add", "-A")
        git(proj, "commit", "-qm", "first")
        rng = random.Random(7)
        moved = changed = 0
        for path in files:
            x = rng.random()
            if x < 0.05 or 0.05 <= x < 0.06:
                rec = json.loads(path.read_text())
                if rec["status"] != "ok":
                    continue
                if x < 0.05:
                    rec["free_m"]["total"] -= 9
                    rec["memtotal_settled_kib"] -= 9 * 1024
                    moved += 1
                else:
                    rec.update(status="oom", reason="Out of memory: Killed process 1 (sh)", free_m=None,
                               memtotal_settled_kib=None)
                    changed += 1
                path.write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n")
        git(proj, "commit", "-qam", "second")
        runs, out = [], ""
        for _ in range(5):
            seconds, out = timed(proj, "HEAD~1", "HEAD")
            runs.append(seconds)
        worktree = [timed(proj, "HEAD~1")[0] for _ in range(3)]
        print(f"compare: two revisions of {len(files)} records each ({moved} moved, {changed} changed status), "
              "whole command, Python start-up included")
        print(f"  revision against revision: median {statistics.median(runs):.2f} s of 5 "
              f"({', '.join(f'{s:.2f}' for s in runs)})  (target < 5 s)")
        print(f"  revision against the working tree: median {statistics.median(worktree):.2f} s of 3")
        print("  " + out.splitlines()[0])


if __name__ == "__main__":
    main()
