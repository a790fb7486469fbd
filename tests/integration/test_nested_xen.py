"""A real Xen 4.17, nested in QEMU (TCG) on this machine, measured through xen+ssh:// like any Xen host.

The dom0 image is built with mmdebstrap from Debian's packages on first use and cached (in the
project's cache, shared with `make report`), so only the first run pays for it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from generator.hosts import nested_xen

from .conftest import ROOT, cli, start_cli, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.xen]

MANIFEST = """\
experiment: {name}
hosts:
  - name: xentest
    kind: nested-xen
guests:
  - name: debian
    kernel: host
sweep:
  memory: [1 GiB, 8 GiB]
  current_memory: {current}
  repeats: 1
timeouts:
  boot: 180s
  settle: 120s
  stable: 3s
post:
  slug: {name}
  title: "Test: {name}"
  content: post.md
"""


@pytest.fixture
def xen_env(tmp_path):
    """The project's cache (the dom0 image is built there once), everything else private to the test."""
    cache = Path(os.environ.get("MEMBALLOON_CACHE", ROOT / ".cache")).resolve()
    return dict(os.environ, MEMBALLOON_CACHE=str(cache), PYTHONUNBUFFERED="1"), cache


def write(tmp_path: Path, name: str, current: str) -> Path:
    path = tmp_path / name / "experiment.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(MANIFEST.format(name=name, current=current))
    (path.parent / "post.md").write_text("# {{ post.title }}\n")
    return path


def nested_qemus(cache: Path, host: str = "xentest") -> list[int]:
    name = nested_xen.qemu_name(cache / "nested" / host, host)
    out = subprocess.run(["pgrep", "-f", f"qemu-system.*{name}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_xen_guest_sees_less_the_larger_memory_is(tmp_path, xen_env):
    env, cache = xen_env
    manifest = write(tmp_path, "xen", "[1024 MiB, 4096 MiB]")
    out = cli(env, "sweep", str(manifest), "--results", str(tmp_path / "res"), timeout=1500)
    assert out.returncode == 0, out.stderr
    assert "domain type xen (a Xen host nested in QEMU (TCG) on this machine); Xen 4.17" in out.stderr
    recs = {(r["memory_mib"], r["current_memory_mib"]): r
            for r in (json.loads(p.read_text()) for p in (tmp_path / "res").rglob("*.json"))}
    assert sorted(recs) == [(1024, 1024), (4096 * 2, 1024), (4096 * 2, 4096)]  # (1 GiB, 4 GiB) is no point
    small, large = recs[(1024, 1024)], recs[(8192, 1024)]
    for r, memory in ((small, 1024), (large, 8192)):
        assert r["status"] == "ok", r
        assert r["domain_type"] == "xen" and r["hypervisor"].startswith("Xen 4.17") and r["balloon_model"] == "xen"
        # a PV guest is built with currentMemory: it sees less than that, at boot and after
        assert r["memtotal_boot_kib"] < 1024 * 1024 and r["memtotal_settled_kib"] < 1024 * 1024
        assert abs(r["free_m"]["total"] - r["memtotal_settled_kib"] / 1024) <= 1
        # Xen's balloon holds currentMemory, as the guest and the host see it
        assert r["xen_balloon"]["target_kb"] == r["xen_balloon"]["current_kb"] == 1024 * 1024
        assert r["host_view"] == {"max_memory_kib": memory * 1024, "used_memory_kib": 1024 * 1024}
        assert any("Xen PV" in line for line in r["dmesg"])
        assert r["xen"]["version"].startswith("4.17") and r["xen"]["total_mib"] > 3000
        assert r["nested"]["cpu_model"] == nested_xen.CPU_MODEL and r["nested"]["dom0_memory_mib"] == 1024
    # the physics of 2012: the larger memory is, the less the guest is left with
    assert large["memtotal_settled_kib"] < small["memtotal_settled_kib"] - 50 * 1024
    # 4 GiB of currentMemory is more than Xen has free beside dom0 (about 3 GiB): refused, with libxl's reason
    refused = recs[(8192, 4096)]
    assert refused["status"] == "refused", refused
    assert "failed to allocate" in refused["reason"] and "libxl" in refused["reason"]
    assert nested_qemus(cache) == []  # the nested host was shut down with the sweep


def test_killed_sweep_leaves_no_nested_host(tmp_path, xen_env):
    env, cache = xen_env
    manifest = write(tmp_path, "xenkill", "[1024 MiB]")
    proc = start_cli(env, "sweep", str(manifest), "--results", str(tmp_path / "res"))
    lines: list[str] = []
    try:
        def booting() -> bool:
            lines.append(proc.stdout.readline())
            return "booting Xen" in lines[-1]
        wait_for(booting, 900, "the nested host to boot")
        wait_for(lambda: nested_qemus(cache), 30, "the nested host's QEMU")
    finally:
        proc.kill()  # SIGKILL: the tool cannot clean up; QEMU must go with it
        proc.wait()
    wait_for(lambda: not nested_qemus(cache), 15, "the nested host's QEMU to die with the tool")
    assert not list((tmp_path / "res").rglob("*.json"))


def test_sigterm_while_dom0_boots_stops_the_nested_host(tmp_path, xen_env):
    env, cache = xen_env
    manifest = write(tmp_path, "xenterm", "[1024 MiB]")
    proc = start_cli(env, "sweep", str(manifest), "--results", str(tmp_path / "res"))
    try:
        def booting() -> bool:
            return "booting Xen" in proc.stdout.readline()
        wait_for(booting, 900, "the nested host to boot")
        wait_for(lambda: nested_qemus(cache), 30, "the nested host's QEMU")
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)  # not after dom0 has finished booting: at once
    finally:
        if proc.poll() is None:
            proc.kill()
    assert nested_qemus(cache) == []
    assert not list((tmp_path / "res").rglob("*.json"))


def test_a_leftover_nested_qemu_is_found_and_stopped(tmp_path):
    """A QEMU named as a nested host (as a killed run would leave it) is stopped on the next start."""
    state = tmp_path / "nested" / "xen"
    state.mkdir(parents=True)
    proc = subprocess.Popen(["qemu-system-x86_64", "-name", nested_xen.qemu_name(state, "xen"), "-machine", "none",
                             "-display", "none", "-monitor", "none", "-S"], stdin=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        assert proc.poll() is None
        assert nested_xen.kill_leftovers(state, "xen") == [proc.pid]
        proc.wait(10)
        assert nested_xen.kill_leftovers(state, "xen") == []
        other = nested_xen.kill_leftovers(tmp_path / "elsewhere", "xen")  # another project's is left alone
        assert other == []
    finally:
        if proc.poll() is None:
            proc.kill()
