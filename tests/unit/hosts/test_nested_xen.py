"""The nested Xen host (generator/hosts/nested_xen.py): its manifest keys, its QEMU command, its
dom0 image recipe, and `xl info` from a hostile host."""
from __future__ import annotations

import dataclasses

import pytest

from generator.errors import ManifestError, UserError
from generator.guests import images
from generator.hosts import nested_xen
from generator.manifest import load
from tests.support.manifests import XEN_HOST, manifest_with  # noqa: F401

XL_INFO = """host                   : dom0
release                : 6.1.0-50-amd64
version                : #1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1 (2026-10-01)
machine                : x86_64
nr_cpus                : 1
total_memory           : 4095
free_memory            : 3028
xen_major              : 4
xen_minor              : 17
xen_extra              : .5
xen_version            : 4.17.5
xen_caps               : xen-3.0-x86_64
xen_scheduler          : credit2
virt_caps              : pv shadow gnttab-v1 gnttab-v2
xen_commandline        : console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M dom0_max_vcpus=1 noreboot
"""


def test_nested_xen_host_loads_with_defaults(write_manifest):
    m = load(manifest_with(write_manifest, XEN_HOST.format(nested="{}")))
    xen = m.host("xen")
    assert xen.is_nested and xen.hypervisor.name == "xen" and xen.is_remote and not xen.is_embedded
    assert (xen.nested.memory, xen.nested.dom0_memory, xen.nested.cpus) == (4096, 1024, 1)
    assert m.balloon_model(xen) == "xen" and m.balloon_model(m.host("local")) == "virtio"


@pytest.mark.parametrize("nested, hosts_extra, message", [
    ("{memory: 1536 MiB}", "", "outside 2048 MiB"),
    ("{memory: 2 GiB, dom0_memory: 1536 MiB}", "", "leaves less than 1 GiB for guests"),
    ("{cpus: 0}", "", "cpus"),
    ("{suite: sid}", "", "suite"),
    ("{}", "    uri: xen+ssh://root@example.org/system\n", "hosts[1].uri: a nested-xen host is started by the tool"),
    ("{}", "    address: example.org\n", "hosts[1].address"),
    ("{}", "    domain_type: kvm\n", "hosts[1].domain_type: a nested-xen host runs Xen"),
])
def test_bad_nested_hosts_are_refused_with_the_key(write_manifest, nested, hosts_extra, message):
    with pytest.raises(ManifestError) as e:
        load(manifest_with(write_manifest, XEN_HOST.format(nested=nested) + hosts_extra))
    assert message in str(e.value)


def test_dom0_recipe_hash_follows_its_content():
    a, b = nested_xen.XEN.recipe(), nested_xen.XEN.recipe()
    assert a.digest() == b.digest()
    changed = dataclasses.replace(a, packages=a.packages + ("htop",))
    assert changed.digest() != a.digest()
    assert dataclasses.replace(a, commands=a.commands + "true\n").digest() != a.digest()
    assert "xen-hypervisor-4.17-amd64" in a.packages and "libvirt-daemon-driver-xen" in a.packages


def test_qemu_command_for_the_nested_host(tmp_path, write_manifest):
    m = load(manifest_with(write_manifest, XEN_HOST.format(nested="{memory: 6 GiB, cpus: 2, dom0_memory: 2 GiB}")))
    folder = tmp_path / "img"
    (folder / "export").mkdir(parents=True)
    for name in ("xen", "vmlinuz", "initrd.img"):
        (folder / "export" / name).write_bytes(b"x")
    image = images.Image(folder, {})
    cmd = nested_xen.XEN.qemu_command(m.host("xen"), image, tmp_path / "state", 2222)
    joined = " ".join(cmd)
    assert "-m 6144" in joined and "-smp 2" in joined and f"-cpu {nested_xen.CPU_MODEL}" in joined
    assert "dom0_mem=2048M,max:2048M" in joined
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in joined  # loopback only
    assert "snapshot=on" in joined  # the cached image is never written
    assert nested_xen.qemu_name(tmp_path / "state", "xen") in cmd
    comma = tmp_path / "a,b"
    (comma / "export").mkdir(parents=True)
    for name in ("xen", "vmlinuz", "initrd.img"):
        (comma / "export" / name).write_bytes(b"x")
    with pytest.raises(UserError, match="multiboot module list"):
        nested_xen.XEN.qemu_command(m.host("xen"), images.Image(comma, {}), tmp_path / "state", 2222)


def test_a_missing_export_names_the_image(tmp_path):
    with pytest.raises(UserError, match="has no exported file 'xen'"):
        images.Image(tmp_path, {}).file("xen")


def test_building_an_image_needs_root(tmp_path, monkeypatch):
    monkeypatch.setattr(images.os, "geteuid", lambda: 1000)
    recipe = images.Recipe(name="t", suite="bookworm", packages=("busybox",))
    with pytest.raises(UserError, match="needs root"):
        images.build(recipe, tmp_path)
    assert not (tmp_path / "images").exists()  # nothing written


@pytest.mark.parametrize("path", ["/../etc/x", "etc/x", "/a/../../b"])
def test_recipe_files_must_stay_in_the_image(tmp_path, path):
    recipe = images.Recipe(name="t", suite="bookworm", packages=("busybox",), files=((path, 0o644, "x"),))
    with pytest.raises(UserError, match="must be absolute and stay in the image"):
        images.build(recipe, tmp_path)
    assert not (tmp_path / "images").exists()


def test_xl_info_parsed_into_the_facts_a_record_keeps():
    from generator.hypervisors.xen import parse_xl_info
    assert parse_xl_info(XL_INFO) == {
        "version": "4.17.5", "total_mib": 4095, "free_mib": 3028, "cpus": 1, "caps": "xen-3.0-x86_64",
        "virt_caps": "pv shadow gnttab-v1 gnttab-v2", "dom0_kernel": "6.1.0-50-amd64", "scheduler": "credit2",
        "commandline": "console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M dom0_max_vcpus=1 noreboot"}


@pytest.mark.parametrize("hostile, key, expected", [
    ("total_memory : ²³", "total_mib", None),                  # str.isdigit() is true for these; int() is not
    ("total_memory : 99999999999999999999", "total_mib", None),
    ("total_memory : -5", "total_mib", None),
    ("nr_cpus : 0x10", "cpus", None),
    ("xen_extra : .5</td><script>x()</script>", "version", "4.17"),  # extra dropped, major.minor kept
    ("xen_major : 4; rm -rf /", "version", None),
    ("release : 6.1\x1b[31mred\x00\r\nlevel", "dom0_kernel", "6.1 [31mred"),
    ("xen_commandline : " + "A" * 5000, "commandline", "A" * 200),
    ("virt_caps : \u202eesrever", "virt_caps", "esrever"),    # bidi override is not printable: dropped
])
def test_xl_info_from_a_hostile_host_is_bounded(hostile, key, expected):
    """A compromised dom0 may print anything: numbers stay numbers, text stays one short printable line."""
    from generator.hypervisors.xen import parse_xl_info
    info = parse_xl_info(hostile + "\n" + XL_INFO)   # the first occurrence of a key wins
    assert info[key] == expected
    for value in info.values():
        assert value is None or isinstance(value, int) or (len(value) <= 200 and value.isprintable())


def test_xl_info_flood_and_garbage():
    from generator.hypervisors.xen import parse_xl_info
    assert parse_xl_info("")["version"] is None
    assert parse_xl_info(b"\xff\xfe".decode("latin-1") * 10)["total_mib"] is None
    flood = ("x" * 1000 + "\n") * 2000 + XL_INFO       # past the read limit: the real lines are not reached
    info = parse_xl_info(flood)
    assert info["version"] is None and info["total_mib"] is None
