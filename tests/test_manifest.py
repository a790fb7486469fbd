import subprocess
import sys
from pathlib import Path

import pytest

from generator.errors import ManifestError
from generator.manifest import describe_schema, find_manifests, load

ROOT = Path(__file__).resolve().parents[1]


def test_default_manifest_is_the_2012_experiment():
    [path] = [p for p in find_manifests(ROOT / "experiments") if p.parent.name == "memory-ballooning"]
    m = load(path)
    assert m.sweep.memory == [1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072]  # to 128 GiB, past 2012's 32
    assert [g.kernel for g in m.guests if not g.is_system] == ["host", "debian:trixie", "debian:bullseye"]
    assert [(g.image, g.hosts) for g in m.guests if g.is_system] == [("debian:bookworm", ["local"])]
    assert m.sweep.memory_model == ["balloon"] and m.hosts[0].memory_backing == "auto"
    assert m.sweep.current_memory == [1024]
    assert [(h.name, h.kind) for h in m.hosts] == [("local", "libvirt"), ("xen", "nested-xen")]
    assert m.hosts[0].is_embedded and not m.hosts[1].is_embedded and m.hosts[1].hypervisor.name == "xen"
    assert m.guests[0].kernel == "host"
    assert len(m.sha256) == 64
    # relative paths resolve against the manifest's folder
    assert Path(m.results) == path.parent / "results"
    assert Path(m.post.content).exists()


def test_good_manifest(write_manifest):
    m = load(write_manifest(memory="[1 GiB, 2048 MiB, 4G]"))
    assert m.sweep.memory == [1024, 2048, 4096]
    assert m.hosts[0].domain_type == "qemu"
    assert m.timeouts.stable == 3
    assert m.balloon.model == "auto" and m.balloon_model(m.hosts[0]) == "virtio" and m.balloon.stats_period == 1


def problems(write_manifest, **kw):
    with pytest.raises(ManifestError) as e:
        load(write_manifest(**kw))
    return e.value.problems


def test_bad_size_names_its_key_path(write_manifest):
    got = problems(write_manifest, memory="[1 GiB, 2 GiB, 4 GiB, 16X]")
    assert got == ["sweep.memory[3]: '16X' has an unknown unit 'X' (use KiB, MiB, GiB, TiB, k, M, G, T, KB, MB, GB)"]


def test_every_problem_is_collected(write_manifest):
    got = problems(write_manifest, memory="[1 GiB, 1000]", domain_type="kvmm", extra="""
        balloon:
          modle: virtio
        """)
    text = "\n".join(got)
    assert "sweep.memory[1]: 1000 has no unit" in text
    assert "hosts[0].domain_type: 'kvmm' is not one of auto, kvm, qemu, xen (did you mean 'kvm'?)" in text
    assert "balloon.modle: unknown key; did you mean 'model'?" in text
    assert len(got) == 3


def test_unknown_key_suggests_the_libvirt_spelling(write_manifest):
    text = "\n".join(problems(write_manifest, text="""
experiment: x
hosts: [{name: local}]
guests: [{name: g}]
sweep: {memory: [1 GiB], currentMemory: [1 GiB]}
post: {slug: x, title: t, content: p.md}
"""))
    assert "sweep.currentMemory: unknown key; did you mean 'current_memory'?" in text
    assert "sweep.current_memory: is required" in text


def test_missing_sections_and_wrong_types(write_manifest):
    got = problems(write_manifest, text="experiment: Bad Name\nhosts: local\n")
    text = "\n".join(got)
    assert "experiment: 'Bad Name' is not a valid name" in text
    assert "hosts: expected a list, got str" in text
    for key in ("guests", "sweep", "post"):
        assert f"{key}: is required" in text


def test_duplicates_and_unusable_sweeps(write_manifest):
    got = problems(write_manifest, text="""
experiment: x
hosts: [{name: a}, {name: a, uri: 'qemu:///system'}]
guests: [{name: g}]
sweep: {memory: [1 GiB, 1024 MiB], current_memory: [2 GiB], repeats: 0}
post: {slug: x, title: t, content: p.md}
""")
    text = "\n".join(got)
    assert "hosts[1].name: 'a' is already used by hosts[0]" in text
    assert "sweep.memory[1]: 1024 is already used by sweep.memory[0]" in text
    assert "sweep.repeats: 0 is not a whole number from 1 to 1000" in text


def test_sizes_must_be_whole_mib(write_manifest):
    assert problems(write_manifest, memory="[1000 KiB]") == [
        "sweep.memory[0]: '1000 KiB' must be a positive whole number of MiB (e.g. '1536 MiB', '2 GiB')"]


@pytest.mark.parametrize("size, mib, suggestion", [("2GB", "1,907.35", "2 GiB"), ("1500 MB", "1,430.51", "1500 MiB"),
                                                   ("16gb", "15,258.79", "16 GiB")])
def test_decimal_units_are_explained_with_the_conversion(write_manifest, size, mib, suggestion):
    [line] = problems(write_manifest, memory=f"[{size}]")
    assert line.startswith(f"sweep.memory[0]: '{size}' is ") and f"({mib} MiB)" in line and f"write '{suggestion}'" in line


def test_files_validate_can_see_are_checked(write_manifest):
    """What would make the sweep or the build fail later is said now, with the key and the fix."""
    text = write_manifest().read_text().replace("kernel: host", "kernel: hots\n    hosts: [kvm1]")
    path = write_manifest(text=text)
    (path.parent / "post.md").unlink()
    with pytest.raises(ManifestError) as e:
        load(path)
    got = "\n".join(e.value.problems)
    assert "guests[0].kernel: " in got and "no such kernel file" in got and "did you mean 'host'?" in got
    assert "post.content: " in got and "no such file" in got
    assert "guests[0].hosts: 'kvm1' is not a host of this manifest (its hosts: local)" in got
