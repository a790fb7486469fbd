"""The nested KVM host (generator/hosts/nested_kvm.py, on nested.py): its manifest keys, its QEMU
command, its image recipe and init, how the sweep picks its domain type, and hosts[].sweep."""
from __future__ import annotations

import dataclasses
import types

import pytest

from generator import hosts, plan
from generator.errors import ManifestError
from generator.guests import images
from generator.hosts import nested_kvm, nested_xen
from generator.manifest import load
from generator.sweep import CanaryBoot, choose_domain_type
from tests.support.manifests import manifest_with  # noqa: F401

KVM_HOST = """
hosts:
  - name: local
    uri: embedded
  - name: kvm
    kind: nested-kvm
    nested: {nested}
"""


def test_nested_kvm_host_loads_and_runs_kvm(write_manifest):
    m = load(manifest_with(write_manifest, KVM_HOST.format(nested="{memory: 6 GiB}")))
    kvm = m.host("kvm")
    assert kvm.is_nested and kvm.is_remote and not kvm.is_embedded
    assert kvm.nested_domain_type == "kvm" and kvm.hypervisor.name == "qemu" and kvm.nested.memory == 6144
    assert m.balloon_model(kvm) == "virtio"
    assert isinstance(hosts.runtime_for(kvm, write_manifest("y").parent), hosts.NestedKVMHost)


@pytest.mark.parametrize("extra, message", [
    ("    domain_type: xen\n", "hosts[1].domain_type: a nested-kvm host runs"),
    ("    domain_type: qemu\n", "hosts[1].domain_type: a nested-kvm host runs"),
    ("    uri: qemu+ssh://root@example.org/system\n", "hosts[1].uri: a nested-kvm host is started by the tool"),
])
def test_bad_nested_kvm_hosts_are_refused_with_the_key(write_manifest, extra, message):
    with pytest.raises(ManifestError) as e:
        load(manifest_with(write_manifest, KVM_HOST.format(nested="{}") + extra))
    assert message in str(e.value)


def test_the_sweep_gives_a_nested_kvm_host_kvm_without_a_canary(write_manifest, tmp_path):
    m = load(manifest_with(write_manifest, KVM_HOST.format(nested="{}")))
    host = types.SimpleNamespace(spec=m.host("kvm"), name="kvm", uri="qemu+ssh://root@127.0.0.1/system")
    dtype, why = choose_domain_type(host, {}, CanaryBoot("", "", "", 30, "run"), tmp_path)
    assert dtype == "kvm" and "nested" in why


def test_recipe_and_init_bring_up_kvm_and_say_why_not():
    a = nested_kvm.KVM.recipe()
    assert a.digest() == nested_kvm.KVM.recipe().digest()
    assert dataclasses.replace(a, packages=a.packages + ("htop",)).digest() != a.digest()
    assert {"qemu-system-x86", "libvirt-daemon-driver-qemu", "openssh-server"} <= set(a.packages)
    init = dict((path, text) for path, _mode, text in a.files)["/usr/local/sbin/memballoon-nested-init"]
    assert "modprobe \"$m\"" in init and "kvm_amd" in init and "kvm-failed" in init and "/dev/kvm" in init
    assert "/dev/ttyS0" in init  # where the READY lines go on this host
    # the two nested kinds share the init's frame and differ in what they start
    xen_init = dict((p, t) for p, _m, t in nested_xen.XEN.recipe().files)["/usr/local/sbin/memballoon-nested-init"]
    assert "/etc/init.d/xen start" in xen_init and "kvm_amd" not in xen_init and "/dev/hvc0" in xen_init


def test_qemu_command_for_the_nested_kvm_host(tmp_path, write_manifest):
    m = load(manifest_with(write_manifest, KVM_HOST.format(nested="{memory: 6 GiB, cpus: 2}")))
    folder = tmp_path / "img"
    (folder / "export").mkdir(parents=True)
    for name in ("vmlinuz", "initrd.img"):
        (folder / "export" / name).write_bytes(b"x")
    cmd = nested_kvm.KVM.qemu_command(m.host("kvm"), images.Image(folder, {}), tmp_path / "state", 2222)
    joined = " ".join(cmd)
    assert "-accel tcg" in joined and "-cpu max" in joined and "-m 6144" in joined and "-smp 2" in joined
    assert f"-kernel {folder / 'export' / 'vmlinuz'}" in joined and "console=ttyS0" in joined
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in joined and "snapshot=on" in joined
    assert nested_kvm.qemu_name(tmp_path / "state", "kvm") in cmd


def test_a_hosts_sweep_narrows_its_points(write_manifest):
    text = KVM_HOST.format(nested="{}") + "    sweep:\n      memory: [1 GiB]\n"
    m = load(manifest_with(write_manifest, text))
    by_host = {}
    for p in plan.points(m):
        by_host.setdefault(p.host, set()).add(p.memory_mib)
    assert by_host["kvm"] == {1024} and by_host["local"] == set(m.sweep.memory)
    with pytest.raises(ManifestError, match=r"hosts\[1\]\.sweep\.memory: memory 3072 MiB not in sweep.memory"):
        load(manifest_with(write_manifest, KVM_HOST.format(nested="{}") + "    sweep:\n      memory: [3 GiB]\n"))
