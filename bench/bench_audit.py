"""make bench-audit: one host with 500 running domains, audited through a fake libvirt (target:
under 5 s). The fake answers at once, so this measures audit's own work: the domain XML parsed
twice per domain, the statistics, the model's curves, sorting and the table. Five runs; the median
is reported, with the model's load (the committed records) timed on its own, and the per-domain
cost side by side for 50 and 500 domains.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.fake_libvirt import GIB, FakeConn, FakeDomain  # noqa: E402
from generator import audit as au  # noqa: E402
from generator.model import load_model  # noqa: E402


def domains(n: int) -> list[FakeDomain]:
    kernels = ["6.1.0-56-amd64", "5.10.0-32-amd64", "", "6.12.117+deb13-amd64", "4.19.0-27-amd64"]
    return [FakeDomain(f"guest-{i:04d}", (1 + i % 64) * GIB, (1 + i % 4) * GIB // 2 + GIB // 2, 700 * 1024 + i,
                       period=None if i % 7 == 0 else 5, kernel=kernels[i % len(kernels)], agent=i % 3 == 0,
                       title=f"web server {i}") for i in range(n)]


def run(n: int, model) -> float:
    conn = FakeConn(domains(n))
    t0 = time.monotonic()
    hosts = au.audit([au.Target("bench", "qemu:///system", lambda ro: conn)], model, au.Options())
    lines = au.table(hosts)
    au.as_json(hosts, model)
    seconds = time.monotonic() - t0
    assert len(hosts[0].guests) == n and len(lines) > n, "every domain is a row"
    return seconds


def main() -> None:
    t0 = time.monotonic()
    model = load_model(ROOT / "experiments")
    load_s = time.monotonic() - t0
    small = [run(50, model) for _ in range(5)]
    big = [run(500, model) for _ in range(5)]
    m50, m500 = statistics.median(small), statistics.median(big)
    print(f"model from {model.records} committed records: {load_s:.2f} s (once per audit)")
    print(f"audit of one host, 50 domains:  median {m50 * 1000:.0f} ms of 5 ({m50 / 50 * 1e6:.0f} us per domain)")
    print(f"audit of one host, 500 domains: median {m500 * 1000:.0f} ms of 5 ({m500 / 500 * 1e6:.0f} us per domain)")
    print(f"500 domains with the model's load: {m500 + load_s:.2f} s (target: under 5 s) -> "
          f"{'ok' if m500 + load_s < 5 else 'MISSED'}")


if __name__ == "__main__":
    main()
