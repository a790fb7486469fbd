"""The kernel's real KVM, nested in QEMU (TCG) on this machine: a Debian 12 host with QEMU and libvirt
that the tool builds and boots with CPU model `max` (SVM with nested paging), measured through
qemu+ssh:// with domain type kvm like any KVM host.

The host's image is built with mmdebstrap on first use and cached in the project's cache (shared with
`make report`), so only the first run pays for it.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from generator.hosts import nested_kvm

from .conftest import ROOT, cli

pytestmark = [pytest.mark.integration]

MANIFEST = """\
experiment: {name}
hosts:
  - name: kvmtest
    kind: nested-kvm
guests:
  - name: debian
    kernel: host
sweep:
  memory: [1 GiB, 4 GiB]
  current_memory: [1024 MiB]
  repeats: 1
timeouts:
  boot: 600s
  settle: 25m     # a 4 GiB point's balloon took 4 to 14 minutes nested (13.5 in a fresh-clone CI run)
  stable: 3s
post:
  slug: {name}
  title: "Test: {name}"
  content: post.md
"""


def nested_qemus(cache: Path, host: str = "kvmtest") -> list[int]:
    name = nested_kvm.qemu_name(cache / "nested" / host, host)
    out = subprocess.run(["pgrep", "-f", f"qemu-system.*{name}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_kvm_guests_nested_in_tcg_are_measured_and_itemized(tmp_path):
    cache = Path(os.environ.get("MEMBALLOON_CACHE", ROOT / ".cache")).resolve()
    env = dict(os.environ, MEMBALLOON_CACHE=str(cache), PYTHONUNBUFFERED="1")
    path = tmp_path / "kvm" / "experiment.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(MANIFEST.format(name="kvm"))
    (path.parent / "post.md").write_text("# {{ post.title }}\n")
    out = cli(env, "sweep", str(path), "--results", str(tmp_path / "res"), timeout=3000)
    assert out.returncode == 0, out.stderr
    assert "domain type kvm (a KVM host nested in QEMU (TCG) on this machine)" in out.stderr
    recs = {r["memory_mib"]: r for r in (json.loads(p.read_text()) for p in (tmp_path / "res").rglob("*.json"))}
    assert sorted(recs) == [1024, 4096]
    for memory, r in recs.items():
        assert r["status"] == "ok", r["reason"]
        assert r["domain_type"] == "kvm" and r["hypervisor"].startswith("QEMU ") and r["balloon_model"] == "virtio"
        assert r["nested"]["cpu_model"] == nested_kvm.CPU_MODEL and "kvm_amd" in r["nested"]["accelerator"]
        assert r["nested"]["outer"].endswith("(TCG) on this machine")
        # itemized as the TCG probes are: the set-aside's items add up to memory minus MemTotal at boot
        items = r["set_aside_kib"]
        assert abs(sum(items.values()) - (memory * 1024 - r["memtotal_boot_kib"])) <= 4
        assert abs(r["memtotal_settled_kib"] - (r["memtotal_boot_kib"] - (memory - 1024) * 1024)) <= 1024
    assert recs[4096]["set_aside_kib"].get("bounce buffer", 0) > 60 * 1024  # RAM above 4 GiB: swiotlb
    assert "bounce buffer" not in recs[1024]["set_aside_kib"]
    assert nested_qemus(cache) == []  # the nested host was shut down with the sweep
