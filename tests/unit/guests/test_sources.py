"""Distributions as sources of kernels and images (generator/guests/sources.py): 'debian:<suite>' is
parsed in one place, and another distribution is one more Source that the manifest, validate, the
probe and the full-system kind all follow without a change of their own."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from generator import kinds
from generator.errors import ManifestError
from generator.guests import probe, sources
from generator.manifest import load


def test_debian_specs_parse_and_misspellings_say_what_a_suite_looks_like():
    debian, release = sources.parse("debian:trixie")
    assert debian.name == "debian" and release == "trixie"
    for not_a_source in ("host", "/boot/vmlinuz", "", "fedora:40", "debian"):
        assert sources.parse(not_a_source) is None
    assert sources.problem("debian:Trixie!") == ("'debian:Trixie!' is not a Debian suite "
                                                 "(e.g. debian:trixie, debian:bookworm)")
    assert sources.problem("debian:trixie\nmain") and sources.problem("/boot/vmlinuz") is None


class Fedora(sources.Source):
    """What a second distribution would write: its name, its releases, and its three answers."""

    name = "fedora"
    release_re = r"[1-9][0-9]{1,2}"
    examples = ("fedora:41",)

    def __init__(self, root: Path):
        self.root, self.asked, self.fetched, self.recipes = root, [], [], []

    def release_problem(self, release, cache_dir):
        self.asked.append(release)
        return None if release == "41" else f"Fedora has no release {release}"

    def fetch_kernel(self, release, cache_dir):
        self.fetched.append(release)
        image = bytearray(0x4000)  # a bzImage header that names its release
        image[0x202:0x206] = b"HdrS"
        struct.pack_into("<H", image, 0x20E, 0x1000)
        version = f"6.11.4-301.fc{release}.x86_64 (mockbuild@fedora) #1 SMP".encode()
        image[0x1200:0x1200 + len(version)] = version
        (self.root / "vmlinuz").write_bytes(bytes(image))
        (self.root / "modules").mkdir(exist_ok=True)
        return self.root / "vmlinuz", self.root / "modules"

    def build_image(self, release, reading, cache_dir, note):
        self.recipes.append((release, reading))
        root = self.root

        class Image:  # what images.build returns: the folder, the disk, and the files beside it
            folder = root / f"fedora-{release}"
            disk = folder / "disk.raw"

            def file(self, name):
                return self.folder / name
        return Image()


@pytest.fixture
def fedora(monkeypatch, tmp_path):
    source = Fedora(tmp_path)
    monkeypatch.setattr(sources, "SOURCES", sources.SOURCES + (source,))
    monkeypatch.setenv("MEMBALLOON_CACHE", str(tmp_path / "cache"))
    return source


def test_another_distribution_is_one_source(fedora, write_manifest, tmp_path):
    guests = ("  - {name: fc, kernel: 'fedora:41'}\n"
              "  - {name: fcsys, image: 'fedora:41', reading: console}\n")
    text = write_manifest().read_text().replace("  - name: debian\n    kernel: host\n", guests)
    m = load(write_manifest(text=text), check_files=True)
    assert [g.kernel for g in m.guests] == ["fedora:41", "host"] and m.guest("fcsys").is_system
    assert not m.guest("fcsys").has_image_file and not m.guest("fc").kernel_file
    assert fedora.asked == ["41", "41"]  # validate asked the source about each, once
    with pytest.raises(ManifestError, match="Fedora has no release 40"):
        load(write_manifest(text=text.replace("fedora:41", "fedora:40")), check_files=True)
    with pytest.raises(ManifestError, match=r"'fedora:rawhide' is not a Fedora release \(e.g. fedora:41\)"):
        load(write_manifest(text=text.replace("fedora:41", "fedora:rawhide")))
    image, modules, release = probe.resolve_kernel("fedora:41", "", tmp_path / "cache")
    assert (image, modules, release) == (tmp_path / "vmlinuz", tmp_path / "modules", "6.11.4-301.fc41.x86_64")
    assert kinds.kind_of(m.guest("fcsys")).name == "system"


def test_the_full_system_kind_boots_the_sources_image(fedora, write_manifest, monkeypatch, tmp_path):
    monkeypatch.setattr(probe, "kernel_release", lambda path: "6.11.4-301.fc41.x86_64")
    class Host:
        name = "local"

        def run(self, *a, **k):
            return type("R", (), {"stdout": "/usr/bin/qemu-img\n"})()

        def stage(self, path, name):
            return f"/staged/{name}"
    text = write_manifest().read_text().replace("  - name: debian\n    kernel: host\n",
                                                "  - {name: fcsys, image: 'fedora:41', reading: console}\n")
    m = load(write_manifest(text=text))
    staged = kinds.kind_of(m.guest("fcsys")).stage(Host(), m.guest("fcsys"), manifest=m, cache_dir=tmp_path,
                                                   note=print)
    assert fedora.recipes == [("41", "console")]
    assert staged.boot["label"] == "fedora:41" and staged.boot["disk"] == "/staged/fedora-41-disk.raw"
    assert staged.boot["kernel"] == "/staged/fedora-41-vmlinuz" and staged.boot["release"] == "6.11.4-301.fc41.x86_64"
