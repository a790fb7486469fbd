"""Boot the probe guest for real (TCG here, no KVM) and check the physics of ballooning."""
from __future__ import annotations

import json
import os
import re
import tempfile
import xml.etree.ElementTree as ET
import signal
from pathlib import Path

import pytest

from .conftest import cli, qemu_pids, start_cli, wait_for

pytestmark = pytest.mark.integration


def host_mem_gib() -> int:
    with open("/proc/meminfo") as f:
        kib = int(f.readline().split()[1])
    return kib // (1024 * 1024)


def records(folder: Path) -> dict[int, dict]:
    return {json.loads(p.read_text())["memory_mib"]: json.loads(p.read_text())
            for p in folder.rglob("*.json")}


def test_ballooned_guest_sees_less_the_larger_memory_is(write_manifest, tmp_path, embed_env):
    too_big = (host_mem_gib() * 2 // 8 + 1) * 8  # a size QEMU cannot allocate on this host
    manifest = write_manifest("physics", memory=f"[1 GiB, 4 GiB, {too_big} GiB]")
    # QEMU's default (private, committed up front) RAM: the host refuses what it cannot commit
    manifest.write_text(manifest.read_text().replace("    domain_type: qemu\n",
                                                     "    domain_type: qemu\n    memory_backing: default\n"))
    out = cli(embed_env, "sweep", str(manifest), "--results", str(tmp_path / "res"))
    assert out.returncode == 0, out.stderr
    recs = records(tmp_path / "res" / "physics")
    assert sorted(recs) == [1024, 4096, too_big * 1024]
    small, large, huge = recs[1024], recs[4096], recs[too_big * 1024]
    for r, memory in ((small, 1024), (large, 4096)):
        assert r["status"] == "ok", r
        # at boot the guest sees (nearly) all of <memory>: the firmware and kernel keep a little
        assert 0.85 * memory * 1024 < r["memtotal_boot_kib"] <= memory * 1024
        # after ballooning it sees less than <currentMemory>
        assert r["memtotal_settled_kib"] < 1024 * 1024
        assert abs(r["free_m"]["total"] - r["memtotal_settled_kib"] / 1024) <= 1
        assert r["meminfo"]["MemTotal"] == r["memtotal_settled_kib"]
        # the host's view: dominfo max = memory, used = currentMemory; the balloon reached its target
        assert r["host_view"] == {"max_memory_kib": memory * 1024, "used_memory_kib": 1024 * 1024}
        assert r["balloon"]["actual"] == 1024 * 1024
        assert r["balloon"]["available"] == r["memtotal_settled_kib"]
        assert r["domain_type"] == "qemu" and r["libvirt_version"] and r["qemu_version"]
        assert r["guest_kernel"] and r["host_kernel"] and len(r["manifest_sha256"]) == 64
        assert r["durations"]["total_s"] > 0 and r["durations"]["settle_s"] is not None
        # the set-aside itemized (memblock=debug): its items sum to memory minus MemTotal at boot, with
        # under 1 MiB unexplained; page descriptors are 64 bytes per 4 KiB page of memory
        items = r["set_aside_kib"]
        assert sum(items.values()) == memory * 1024 - r["memtotal_boot_kib"] and abs(items["unexplained"]) < 1024
        assert abs(items["page descriptors"] - memory * 16) < 100
        zones = r["zone_reserves"]["zones"]
        assert zones["DMA32"]["min"] < zones["DMA32"]["low"] < zones["DMA32"]["high"]
    # the bounce buffer appears once RAM reaches above 4 GiB
    assert "bounce buffer" not in small["set_aside_kib"] and large["set_aside_kib"]["bounce buffer"] >= 65536
    # the larger memory is, the less the guest is left with
    assert large["memtotal_settled_kib"] < small["memtotal_settled_kib"] - 50 * 1024
    # the balloon walked down from memory to currentMemory
    actuals = [a for _, a, _ in large["balloon_timeline"] if a is not None]
    assert actuals[0] == 4096 * 1024 and actuals[-1] == 1024 * 1024
    assert huge["status"] == "refused" and "memory" in huge["reason"].lower()
    assert qemu_pids(embed_env["MEMBALLOON_EMBED_ROOT"]) == []

    status = cli(embed_env, "status", str(manifest), "--results", str(tmp_path / "res"))
    assert status.returncode == 0
    assert "2 done, 1 failed, 0 missing" in status.stdout
    assert f"failed   local/debian/m{too_big * 1024}-c1024-r1" in status.stdout

    again = cli(embed_env, "sweep", str(manifest), "--results", str(tmp_path / "res"))
    assert again.returncode == 0 and "nothing to measure" in again.stderr


def test_guest_squeezed_below_its_boot_reservation_runs_out_of_memory(write_manifest, tmp_path, embed_env):
    # At 16 GiB the kernel reserves about 400 MiB at boot; a 128 MiB balloon target leaves it nothing.
    text = write_manifest("oom").read_text().replace("current_memory: [1024 MiB]", "current_memory: [128 MiB]")
    manifest = write_manifest("oom", text=text.replace("memory: [1 GiB, 2 GiB]", "memory: [16 GiB]"))
    out = cli(embed_env, "sweep", str(manifest), "--results", str(tmp_path / "res"))
    assert out.returncode == 0, out.stderr
    [rec] = records(tmp_path / "res").values()
    assert rec["status"] == "oom", rec
    assert "memory" in rec["reason"].lower()
    assert rec["memtotal_boot_kib"] > 15 * 1024 * 1024  # it booted with all of memory, then died
    assert any("Kernel panic" in line or "Out of memory" in line for line in rec["console_excerpt"])
    assert qemu_pids(embed_env["MEMBALLOON_EMBED_ROOT"]) == []


def test_killed_sweep_resumes_and_leaves_no_qemu(write_manifest, tmp_path, embed_env):
    manifest = write_manifest("resume", memory="[1 GiB, 2 GiB, 3 GiB]")
    res = tmp_path / "res"
    proc = start_cli(embed_env, "sweep", str(manifest), "--results", str(res), "--jobs", "1")
    root = embed_env["MEMBALLOON_EMBED_ROOT"]
    try:
        wait_for(lambda: list(res.rglob("*.json")), 300, "the first point's record")
        # the second point's guest (largest memory first: 3 GiB, then 2 GiB); the first one's QEMU may
        # still be in the reaper's hands
        wait_for(lambda: qemu_pids(root, "-m2048-"), 60, "the second point's guest to start")
    finally:
        proc.kill()  # SIGKILL: no chance to clean up
        proc.wait()
    [first] = list(res.rglob("*.json"))
    kept = first.read_text()
    assert qemu_pids(root), "expected the killed sweep to leave a guest behind for the next run to clean"
    out = cli(embed_env, "sweep", str(manifest), "--results", str(res), "--jobs", "1")
    assert out.returncode == 0, out.stderr
    # the leftover guest is gone: removed by the next run (which then names it), or already stopped by
    # libvirt when it reconnected to a guest whose start it had not finished
    removed = re.search(r"removed (\d+) leftover domain\(s\) of an earlier run: (.*)", out.stderr)
    assert removed is None or "-debian-m" in removed.group(2), out.stderr
    assert "1 point(s) already measured; 2 to measure" in out.stderr
    assert first.read_text() == kept  # not measured again
    assert sorted(records(res / "resume")) == [1024, 2048, 3072]
    assert all(r["status"] == "ok" for r in records(res / "resume").values())
    assert qemu_pids(root) == []


def test_sigterm_destroys_running_guests_and_records_nothing_half(write_manifest, tmp_path, embed_env):
    manifest = write_manifest("term", memory="[2 GiB]")
    proc = start_cli(embed_env, "sweep", str(manifest), "--results", str(tmp_path / "res"))
    root = embed_env["MEMBALLOON_EMBED_ROOT"]
    try:
        wait_for(lambda: qemu_pids(root), 120, "the guest to start")
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "finished points are saved" in output
    assert qemu_pids(root) == []
    assert not list((tmp_path / "res").rglob("*.json")) if (tmp_path / "res").exists() else True


def test_second_sweep_on_the_same_root_is_refused(write_manifest, tmp_path, embed_env):
    manifest = write_manifest("lock", memory="[1 GiB]")
    proc = start_cli(embed_env, "sweep", str(manifest), "--results", str(tmp_path / "a"))
    try:
        wait_for(lambda: qemu_pids(embed_env["MEMBALLOON_EMBED_ROOT"]), 120, "the first sweep's guest")
        out = cli(embed_env, "sweep", str(manifest), "--results", str(tmp_path / "b"))
        assert out.returncode == 1
        assert "another sweep" in out.stderr and "MEMBALLOON_EMBED_ROOT" in out.stderr
    finally:
        proc.wait(timeout=300)
    assert proc.returncode == 0


def test_auto_domain_type_falls_back_to_tcg_and_says_why(write_manifest, tmp_path, embed_env):
    manifest = write_manifest("auto", memory="[1 GiB]", domain_type="auto", canary="15s")
    env = dict(embed_env, MEMBALLOON_CACHE=str(tmp_path / "cache"),  # no cached canary result
               MEMBALLOON_MACHINE_CACHE=str(tmp_path / "machine"))
    out = cli(env, "sweep", str(manifest), "--results", str(tmp_path / "res"))
    assert out.returncode == 0, out.stderr
    # the wait is said before it starts, with how to check again
    canary_line = next(line for line in out.stderr.splitlines() if "checking whether KVM works" in line)
    assert "up to 15 s" in canary_line and "delete that file to check again" in canary_line
    lines = out.stderr.splitlines()
    assert lines.index(canary_line) < next(i for i, line in enumerate(lines) if "domain type" in line)
    [rec] = records(tmp_path / "res").values()
    assert rec["status"] == "ok"
    assert rec["domain_type"] in ("kvm", "qemu")
    if rec["domain_type"] == "qemu":  # this machine: nested KVM does not work
        assert "KVM" in rec["domain_type_reason"] and "TCG" in rec["domain_type_reason"]
    else:
        assert "canary" in rec["domain_type_reason"]
    assert qemu_pids(embed_env["MEMBALLOON_EMBED_ROOT"]) == []


def test_a_debian_archive_kernel_with_xz_modules_boots(write_manifest, tmp_path, embed_env):
    """kernel: debian:trixie - fetched from Debian's archive, .ko.xz modules, no modules.dep."""
    text = write_manifest("trixie").read_text().replace("kernel: host", "kernel: 'debian:trixie'")
    manifest = write_manifest("trixie", text=text.replace("memory: [1 GiB, 2 GiB]", "memory: [2 GiB]"))
    out = cli(embed_env, "sweep", str(manifest), "--results", str(tmp_path / "res"))
    assert out.returncode == 0, out.stderr
    [rec] = records(tmp_path / "res").values()
    assert rec["status"] == "ok", rec
    assert "deb13" in rec["guest_kernel"] or rec["guest_kernel"].startswith("6.")
    assert rec["memtotal_settled_kib"] < 1024 * 1024 < rec["memtotal_boot_kib"]  # the balloon driver loaded
    cache = Path(embed_env["MEMBALLOON_CACHE"]) / "kernels" / "debian-trixie"
    assert list(cache.glob("usr/lib/modules/*/kernel/drivers/virtio/virtio_balloon.ko.xz"))


def test_pvh_boot_measures_what_the_bzimage_boot_measures(write_manifest, tmp_path, embed_env):
    """The fast way (the uncompressed kernel through its PVH entry) against the firmware + bzImage
    way, same kernel, same points: MemTotal at boot and after ballooning agree to within 16 KiB (four
    pages: the firmware path's decompressor places the kernel at a random physical address, which once
    in a few runs moves three pages of early reservations; PVH does not relocate it)."""
    text = write_manifest("boots").read_text().replace(
        "  - name: debian\n    kernel: host\n",
        "  - name: fast\n    kernel: host\n    boot: pvh\n  - name: slow\n    kernel: host\n    boot: bzimage\n")
    manifest = write_manifest("boots", text=text.replace("memory: [1 GiB, 2 GiB]", "memory: [1 GiB, 4 GiB]"))
    out = cli(embed_env, "sweep", str(manifest), "--results", str(tmp_path / "res"))
    assert out.returncode == 0, out.stderr
    recs = {(json.loads(p.read_text())["guest"], json.loads(p.read_text())["memory_mib"]): json.loads(p.read_text())
            for p in (tmp_path / "res").rglob("*.json")}
    for memory in (1024, 4096):
        fast, slow = recs[("fast", memory)], recs[("slow", memory)]
        assert fast["status"] == slow["status"] == "ok", (fast["reason"], slow["reason"])
        assert (fast["boot_method"], slow["boot_method"]) == ("pvh", "bzimage")
        assert abs(fast["memtotal_boot_kib"] - slow["memtotal_boot_kib"]) <= 16
        assert abs(fast["memtotal_settled_kib"] - slow["memtotal_settled_kib"]) <= 16
        assert abs(fast["free_m"]["total"] - slow["free_m"]["total"]) <= 1
        # the firmware and decompression the fast way skips
        assert fast["phases"]["firmware_s"] < slow["phases"]["firmware_s"]
        for r in (fast, slow):  # every phase accounted for, within the point's wall time
            phases = r["phases"]
            for key in ("define_start_s", "firmware_s", "kernel_to_init_s", "module_load_s", "inflation_s",
                        "stability_s", "reading_s", "teardown_s"):
                assert phases[key] >= 0, (key, phases)
            assert sum(v for k, v in phases.items() if k != "inflation_host_s") <= r["durations"]["total_s"] + 0.5
    # at 4 GiB the balloon took 3 GiB back, and the point ended once it had, not after a fixed wait
    four = recs[("fast", 4096)]
    assert four["phases"]["inflation_s"] > 0 and four["phases"]["stability_s"] < 1.0
    assert four["balloon"]["actual"] == 1024 * 1024
    status = cli(embed_env, "status", str(manifest), "--results", str(tmp_path / "res"), "-v")
    assert status.returncode == 0 and "kernel_to_init" in status.stdout and "inflation" in status.stdout


def test_a_point_larger_than_the_host_boots_on_a_memfd(write_manifest, tmp_path, embed_env):
    """memory_backing auto: RAM the host commits page by page, so a guest larger than the host starts
    (the balloon then takes back only 1 GiB, to keep the test short)."""
    big = host_mem_gib() * 4 // 3 + 1
    text = write_manifest("big").read_text().replace("current_memory: [1024 MiB]", f"current_memory: [{big - 1} GiB]")
    manifest = write_manifest("big", text=text.replace("memory: [1 GiB, 2 GiB]", f"memory: [{big} GiB]"))
    out = cli(embed_env, "sweep", str(manifest), "--results", str(tmp_path / "res"))
    assert out.returncode == 0, out.stderr
    [rec] = records(tmp_path / "res").values()
    assert rec["status"] == "ok", rec
    assert rec["memory_backing"] == "memfd"
    assert rec["memtotal_boot_kib"] > host_mem_gib() * 1024 * 1024  # the guest saw more than the host has
    assert rec["balloon"]["actual"] == (big - 1) * 1024 * 1024
    assert qemu_pids(embed_env["MEMBALLOON_EMBED_ROOT"]) == []


def test_virtio_mem_and_dimm_guests_boot_with_current_memory(write_manifest, tmp_path, embed_env):
    text = write_manifest("models").read_text().replace("repeats: 1", "repeats: 1\n  memory_model: [virtio-mem, dimm]")
    manifest = write_manifest("models", text=text.replace("memory: [1 GiB, 2 GiB]", "memory: [16 GiB]"))
    out = cli(embed_env, "sweep", str(manifest), "--results", str(tmp_path / "res"))
    assert out.returncode == 0, out.stderr
    recs = {json.loads(p.read_text())["memory_model"]: json.loads(p.read_text()) for p in (tmp_path / "res").rglob("*.json")}
    assert sorted(recs) == ["dimm", "virtio-mem"]
    for r in recs.values():
        assert r["status"] == "ok", r
        # booted with currentMemory: nothing sized for the 16 GiB ceiling but the bounce buffer
        assert r["memtotal_boot_kib"] == r["memtotal_settled_kib"] < 1024 * 1024
        assert r["host_view"]["used_memory_kib"] == 1024 * 1024
        assert r["phases"]["inflation_s"] == 0
    assert "-virtio-mem-r1.json" in str(next((tmp_path / "res").rglob("*virtio-mem*")))


def test_memory_plugged_live_reaches_the_guest_and_goes_again(write_manifest, tmp_path, embed_env):
    """The sweep plugs 1 GiB into running virtio-mem and DIMM guests (generator/plugging.py) and takes it
    out again: the guest's MemTotal grows by exactly that and goes back; MemFree grows by less (the page
    descriptors of the new memory); both steps finish, and no QEMU is left."""
    text = write_manifest("plug").read_text().replace(
        "repeats: 1", "repeats: 1\n  memory_model: [virtio-mem, dimm]\n  plugged: [1 GiB]")
    manifest = write_manifest("plug", text=text.replace("memory: [1 GiB, 2 GiB]", "memory: [4 GiB]"))
    out = cli(embed_env, "sweep", str(manifest), "--results", str(tmp_path / "res"))
    assert out.returncode == 0, out.stderr
    recs = {json.loads(p.read_text())["memory_model"]: json.loads(p.read_text()) for p in (tmp_path / "res").rglob("*.json")}
    assert sorted(recs) == ["dimm", "virtio-mem"]
    for model, r in recs.items():
        assert r["status"] == "ok", r
        plug = r["plug"]
        assert "error" not in plug, (model, plug)
        assert plug["memtotal_plugged_kib"] - plug["memtotal_before_kib"] == 1024 * 1024, (model, plug)
        assert plug["memtotal_unplugged_kib"] == plug["memtotal_before_kib"], (model, plug)
        gained = plug["memfree_plugged_kib"] - plug["memfree_before_kib"]
        assert 1024 * 1024 - 32 * 1024 < gained < 1024 * 1024 - 8 * 1024, (model, gained)  # ~16 MiB of page descriptors
        assert 0 < plug["plug_s"] < 60 and 0 < plug["unplug_s"] < 60
    assert "-plugged-1024MiB-r1.json" in str(next((tmp_path / "res").rglob("*virtio-mem*")))
    assert not qemu_pids(embed_env["MEMBALLOON_EMBED_ROOT"])


def test_autodeflate_keeps_a_squeezed_guest_alive(write_manifest, tmp_path, embed_env):
    text = write_manifest("deflate").read_text().replace("current_memory: [1024 MiB]", "current_memory: [128 MiB]")
    text = text.replace("repeats: 1", "repeats: 1\n  autodeflate: [false, true]")
    manifest = write_manifest("deflate", text=text.replace("memory: [1 GiB, 2 GiB]", "memory: [4 GiB]"))
    out = cli(embed_env, "sweep", str(manifest), "--results", str(tmp_path / "res"))
    assert out.returncode == 0, out.stderr
    recs = {json.loads(p.read_text())["autodeflate"]: json.loads(p.read_text()) for p in (tmp_path / "res").rglob("*.json")}
    assert recs[False]["status"] == "oom", recs[False]["reason"]  # squeezed below its boot-time bookkeeping
    assert recs[True]["status"] == "ok", recs[True]["reason"]  # the balloon gave memory back instead
    assert "the balloon stopped at" in recs[True]["reason"]
    assert recs[True]["balloon"]["actual"] > 128 * 1024


def test_predict_for_sizes_never_measured_then_measured_live(write_manifest, tmp_path, embed_env):
    """predict answers from the committed records for 6 and 12 GiB at currentMemory 2048 MiB and 24 GiB at
    1024 MiB, which no experiment measured (not powers of two: the hash tables round up); then the points
    are booted: what the guest sees is within 1 MiB of the kernel's rules, item by item, and survival is
    as predicted."""
    root = Path(__file__).resolve().parents[2]
    asked = {}
    for gib, current in ((6, 2048), (12, 2048), (24, 1024)):
        out = cli(embed_env, "predict", "--guest", "debian", "--experiment", "memory-ballooning", "--memory",
                  f"{gib}GiB", "--current-memory", f"{current}MiB", "--json", "--experiments", str(root / "experiments"))
        assert out.returncode == 0, out.stderr
        p = json.loads(out.stdout)
        assert p["how"] == "from the kernel's rules (not measured at this size)" and p["survives"] is True
        assert gib * 1024 not in p["measured_sizes"] and p["hypervisor"] == "QEMU (TCG)"
        asked[gib * 1024] = p
    recs = {}
    for name, memory, current in (("predicted", "[6 GiB, 12 GiB]", 2048), ("predicted24", "[24 GiB]", 1024)):
        manifest = write_manifest(name, memory=memory)
        manifest.write_text(manifest.read_text().replace("current_memory: [1024 MiB]",
                                                         f"current_memory: [{current} MiB]"))
        out = cli(embed_env, "sweep", str(manifest), "--results", str(tmp_path / "res"))
        assert out.returncode == 0, out.stderr
        recs.update({json.loads(f.read_text())["memory_mib"]: json.loads(f.read_text())
                     for f in (tmp_path / "res" / name).rglob("*.json")})
    assert sorted(recs) == [6144, 12288, 24576]
    for memory, rec in recs.items():
        p = asked[memory]
        assert rec["status"] == "ok"
        assert abs(rec["memtotal_settled_kib"] / 1024 - p["sees_mib"]) <= 1, (memory, rec["memtotal_settled_kib"], p)
        for item in ("page descriptors", "hash tables", "bounce buffer"):
            assert abs(rec["set_aside_kib"][item] / 1024 - p["items"][item]["mib"]) <= 1, (memory, item)


