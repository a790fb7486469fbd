"""Full-system guests: a Debian built with mmdebstrap, booted from overlays, read through the guest agent.

The image is built on first use into the project's cache (shared with `make report`), so only the
first run pays for it; the embedded libvirt root stays the test session's own.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from generator import predict
from generator.guests import images, system

from .conftest import ROOT, cli, qemu_pids, start_cli, wait_for

pytestmark = pytest.mark.integration

MANIFEST = """\
experiment: {name}
hosts:
  - name: local
    uri: embedded
    domain_type: qemu
guests:
  - name: system
{guest}
sweep:
  memory: {memory}
  current_memory: [1024 MiB]
  repeats: 1
timeouts:
  boot: 300s
  settle: 300s
post:
  slug: {name}
  title: "Test: {name}"
  content: post.md
"""


@pytest.fixture
def system_env(embed_env):
    cache = Path(os.environ.get("MEMBALLOON_CACHE", ROOT / ".cache")).resolve()
    return dict(embed_env, MEMBALLOON_CACHE=str(cache)), cache


def write(tmp_path: Path, name: str, guest: str, memory: str) -> Path:
    path = tmp_path / name / "experiment.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(MANIFEST.format(name=name, guest=guest, memory=memory))
    (path.parent / "post.md").write_text("# {{ post.title }}\n")
    return path


def recs(folder: Path) -> dict[int, dict]:
    return {r["memory_mib"]: r for r in (json.loads(p.read_text()) for p in folder.rglob("*.json"))}


def overlays(env) -> list[Path]:
    return sorted((Path(env["MEMBALLOON_EMBED_ROOT"]) / "work" / "overlays").glob("*.qcow2"))


def test_full_debian_read_through_the_agent(tmp_path, system_env):
    env, _cache = system_env
    manifest = write(tmp_path, "sys", "    image: debian:bookworm", "[1 GiB, 4 GiB]")
    out = cli(env, "sweep", str(manifest), "--results", str(tmp_path / "res"), timeout=1500)
    assert out.returncode == 0, out.stderr
    got = recs(tmp_path / "res")
    assert sorted(got) == [1024, 4096]
    for memory, r in got.items():
        assert r["status"] == "ok", r
        assert r["guest_kind"] == "system" and r["reading"] == "agent" and r["image"] == "debian:bookworm"
        # the agent's MemTotal is what the balloon statistics report as available
        assert r["cross_check"]["agree"] is True
        assert r["cross_check"]["agent_memtotal_kib"] == r["balloon"]["available"] == r["memtotal_settled_kib"]
        assert r["free_m"]["total"] < 1024 and r["balloon"]["actual"] == 1024 * 1024
        assert r["host_view"] == {"max_memory_kib": memory * 1024, "used_memory_kib": 1024 * 1024}
        assert any(line.startswith("Memory:") for line in r["dmesg"]) and r["oom_kills"] == []
        # itemized as the probe is, from its kernel's log read once settled (booted with memblock=debug)
        items = r["set_aside_kib"]
        assert sum(items.values()) == memory * 1024 - r["memtotal_boot_kib"]
        assert abs(items["page descriptors"] - memory * 16) < 200 and abs(items.get("unexplained", 0)) < 1024, items
        assert ("bounce buffer" in items) == (memory > 3584), items
        assert r["zone_reserves"]["read"] == "settled" and r["zone_reserves"]["sysctl"]["min_free_kbytes"] > 0
        assert 0 < predict.used_kib(r) < r["memtotal_settled_kib"] and predict.margin_mib(r) > 0
    assert got[4096]["free_m"]["total"] < got[1024]["free_m"]["total"] - 50
    assert overlays(env) == [] and qemu_pids(env["MEMBALLOON_EMBED_ROOT"]) == []
    status = cli(env, "status", str(manifest), "--results", str(tmp_path / "res"))
    assert "read via agent" in status.stdout and "DISAGREE" not in status.stdout


def test_an_image_without_the_agent_is_read_from_its_console(tmp_path, system_env):
    """guest/memballoon-report, installed in an image that has no agent, prints the report at boot."""
    env, _cache = system_env
    manifest = write(tmp_path, "syscon", "    image: debian:bookworm\n    reading: console", "[2 GiB]")
    out = cli(env, "sweep", str(manifest), "--results", str(tmp_path / "res"), timeout=1500)
    assert out.returncode == 0, out.stderr
    [r] = recs(tmp_path / "res").values()
    assert r["status"] == "ok", r
    assert r["reading"] == "console" and r["cross_check"]["agree"] is True
    assert r["cross_check"]["console_memtotal_kib"] == r["balloon"]["available"] == r["memtotal_settled_kib"]
    assert r["free_m"]["total"] < 1024 and r["balloon"]["actual"] == 1024 * 1024
    assert r["guest_kernel"] and overlays(env) == []


def test_a_system_read_over_ssh(tmp_path, system_env):
    """The image's sshd, reached on a forwarded loopback port, its host key checked (made at build time)."""
    env, _cache = system_env
    manifest = write(tmp_path, "sysssh", "    image: debian:bookworm\n    reading: ssh\n    address: forwarded",
                     "[2 GiB]")
    out = cli(env, "sweep", str(manifest), "--results", str(tmp_path / "res"), timeout=1500)
    assert out.returncode == 0, out.stderr
    assert "ERROR" not in out.stderr  # connection attempts while the guest boots are not errors
    [r] = recs(tmp_path / "res").values()
    assert r["status"] == "ok", r
    assert r["reading"] == "ssh" and r["cross_check"]["agree"] is True
    assert r["cross_check"]["ssh_memtotal_kib"] == r["balloon"]["available"] == r["memtotal_settled_kib"]
    assert r["free_m"]["total"] < 1024 and r["balloon"]["actual"] == 1024 * 1024
    assert overlays(env) == []


def test_a_user_image_is_never_written(tmp_path, system_env):
    env, cache = system_env
    built = images.build(system.debian_recipe("bookworm"), cache)
    user = tmp_path / "user.img"
    subprocess.run(["cp", "--sparse=always", str(built.disk), str(user)], check=True)

    def sha() -> str:
        h = hashlib.sha256()
        with open(user, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        return h.hexdigest()
    before, mtime = sha(), user.stat().st_mtime_ns
    guest = (f"    image: {user}\n    kernel: {built.file('vmlinuz')}\n    initrd: {built.file('initrd.img')}")
    manifest = write(tmp_path, "user", guest, "[2 GiB]")
    # the image and the kernel are outside the test's project folder: the operator trusts them
    out = cli(env, "sweep", str(manifest), "--results", str(tmp_path / "res"), "--trust", str(tmp_path),
              "--trust", str(built.folder), timeout=900)
    assert out.returncode == 0, out.stderr
    [r] = recs(tmp_path / "res").values()
    assert r["status"] == "ok", r  # it booted and wrote to its disk (journal, logs)...
    assert r["image"] == "user.img" and r["boot_method"] == "kernel"
    assert sha() == before and user.stat().st_mtime_ns == mtime  # ...which was the overlay, not the image
    assert overlays(env) == []


def test_killed_run_leaves_no_overlay_or_guest(tmp_path, system_env):
    env, _cache = system_env
    manifest = write(tmp_path, "syskill", "    image: debian:bookworm", "[2 GiB]")
    root = env["MEMBALLOON_EMBED_ROOT"]
    proc = start_cli(env, "sweep", str(manifest), "--results", str(tmp_path / "res"))
    try:
        wait_for(lambda: overlays(env) and qemu_pids(root), 600, "the full system's overlay and QEMU")
    finally:
        proc.kill()
        proc.wait()
    assert overlays(env), "expected the killed run to leave its overlay for the next run to remove"
    manifest.write_text(manifest.read_text().replace("[2 GiB]", "[1 GiB]"))  # another point: nothing to wait for
    out = cli(env, "sweep", str(manifest), "--results", str(tmp_path / "res"), "--only", "m1024-*", timeout=900)
    assert out.returncode == 0, out.stderr
    assert "overlay(s) a killed run left" in out.stderr
    assert overlays(env) == [] and qemu_pids(root) == []
    shutil.rmtree(tmp_path / "res", ignore_errors=True)
