"""The additions docs/extending.md's "Extending" names, each performed the way a contributor would: a hypervisor, a
factor, a record field, a graph and a guest kind, each followed through the manifest, the plan, the
domain XML, a measurement (a fake host and libvirt, tests/support/fake_host.py) and the build of a
post. Each addition is made only where docs/extending.md says it is made (the registry lines are patched in, the
way the Fedora source test adds a source); nothing else is edited. So its counts are what these
tests touch, and a room that needs one more file turns a test red."""
from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from generator import hypervisors, kinds, measure, results
from generator import manifest as manifest_mod
from generator.domain import DomainSpec
from generator.hypervisors.qemu import QEMU
from generator.kinds import Staged
from generator.manifest import Factor, load
from generator.plan import points, results_dir
from generator.pointrun import PointRun
from generator.publish import graphs, plots
from generator.publish.build import build_all
from tests.support.fake_host import FakeHost, probe_domain
from tests.support.sample import new_site

PROBE = {"kernel": "/k", "initrd": "/i", "release": "6.1.0-57-amd64", "boot_method": "pvh"}
FACTS = {"hypervisor": "QEMU 8.2.2", "qemu_version": "8.2.2", "libvirt_version": "10.0.0", "kernel": "6.1.0-57-amd64",
         "cores": 2, "memory_mib": 32768}


def sweep(m, staged: Staged | None = None) -> list[dict]:
    """Every point of `m` measured on a fake host of its first host's spec, written as the sweep writes."""
    host = FakeHost(probe_domain, m.hosts[0])
    folder = results_dir(m)
    out = []
    for p in points(m):
        dtype = m.host(p.host).domain_type
        run = PointRun(p, m, host, FACTS, dtype, "set in the manifest", "t", threading.Event())
        record = measure.measure_staged(run, staged or Staged(kinds.kind_of(m.guest(p.guest)), PROBE))
        record = results.checked(dict(record, schema_version=results.SCHEMA_VERSION))
        results.write_record(p.record_path(folder), record, root=folder)
        out.append(record)
    return out


def build(m, tmp_path):
    """The post built into a new site; in this process (workers=1), where the patched registries are."""
    site = new_site(tmp_path)
    report = build_all([m], site=site, quiet=True, workers=1)
    return (site / "content/posts" / m.post.slug / "index.md").read_text(), report, site


def manifest(write_manifest, *, host: str = "", sweep_extra: str = "", content: str | None = None, guests: str = ""):
    """A manifest of the default post (or `content`), 1 and 4 GiB at currentMemory 1024 MiB."""
    text = write_manifest(memory="[1 GiB, 4 GiB]").read_text()
    if host:
        text = text.replace("    uri: embedded\n    domain_type: qemu\n", host)
    if sweep_extra:
        text = text.replace("  repeats: 1\n", "  repeats: 1\n" + sweep_extra)
    if guests:
        text = text.replace("  - name: debian\n    kernel: host\n", guests)
    if content is None:
        text = text.replace("  content: post.md\n", "")
    path = write_manifest(text=text)
    if content is not None:
        (path.parent / "post.md").write_text(content)
    return load(path, check_files=False)


# --- a hypervisor: its module (here, a class) and its line in HYPERVISORS ---------------------------
class Toy(QEMU):
    """A hypervisor that writes QEMU's XML under its own domain type and URI driver."""

    name = "toy"
    title = "Toy"
    domain_types = ("toy",)
    labels = {"toy": "Toy VMM"}
    uri_schemes = ("toy",)
    uri_paths = ("/system",)
    host_kinds = ()


def test_a_hypervisor_is_its_class_and_its_line_in_the_registry(monkeypatch, write_manifest, tmp_path):
    toy = Toy()
    monkeypatch.setattr(hypervisors, "HYPERVISORS", hypervisors.HYPERVISORS + (toy,))
    m = manifest(write_manifest, host="    uri: 'toy:///system'\n    domain_type: toy\n")
    assert m.host("local").hypervisor is toy   # the manifest accepts its URI and domain type
    assert len(points(m)) == 2
    records = sweep(m)
    assert [r["status"] for r in records] == ["ok", "ok"] and {r["domain_type"] for r in records} == {"toy"}
    page, _, _ = build(m, tmp_path)
    assert "| local | Toy VMM | " in page   # the post names it by its label
    assert hypervisors.for_domain_type("toy") is toy and hypervisors.rank("toy") > hypervisors.rank("xen")


def test_a_domain_type_nobody_registered_is_an_unknown_hypervisor_never_qemu():
    hv = hypervisors.for_domain_type("lxc")
    assert hv is hypervisors.UNKNOWN and hv.name == "unknown" and not hv.inflates_after_boot
    assert hypervisors.for_domain_type("") is hypervisors.for_domain_type("qemu")  # records before domain types
    with pytest.raises(ValueError, match="no registered hypervisor"):
        hv.render(DomainSpec(name="x", domain_type="lxc", memory_mib=1024, current_memory_mib=1024, vcpus=1,
                             kernel="", initrd="", cmdline="", console="", balloon_model="none", stats_period=1))


# --- a factor: its Factor(...) in FACTORS (here: vcpus, already a DomainSpec field) -----------------
@pytest.fixture
def add_factor():
    before = list(manifest_mod.FACTORS)

    def add(factor: Factor) -> None:
        manifest_mod.add_factor(factor)
    yield add
    manifest_mod.FACTORS[:] = before
    manifest_mod.Sweep = manifest_mod.sweep_schema(before)


def test_a_factor_is_its_declaration(add_factor, write_manifest, tmp_path):
    add_factor(Factor(name="vcpus", convert=manifest_mod._values(manifest_mod._int_in(1, 64)), kind=int, default=1,
                      key_format="v{}", path_format="vcpus-{}", label_format="{} vCPUs",
                      doc="virtual CPUs of the guest, e.g. [1, 2]"))
    m = manifest(write_manifest, sweep_extra="  vcpus: [1, 2]\n")
    pts = points(m)
    assert len(pts) == 4 and {p.key for p in pts if p.memory_mib == 4096} == {"local/debian/m4096-c1024-r1",
                                                                                "local/debian/m4096-c1024-v2-r1"}
    two = next(p for p in pts if p.factors["vcpus"] == 2 and p.memory_mib == 4096)
    assert two.record_path(Path("R")) == Path("R/local/debian/memory-4096MiB-current-1024MiB-vcpus-2-r1.json")
    records = sweep(m)
    host = FakeHost(probe_domain, m.hosts[0])
    run = PointRun(two, m, host, FACTS, "qemu", "test", "t", threading.Event())
    measure.measure(run, PROBE)
    assert ET.fromstring(host.conn.domains[0].xml).findtext("vcpu") == "2"   # in the domain XML
    assert sorted((r["vcpus"], r["guest_vcpus"]) for r in records) == [(1, 1), (1, 1), (2, 2), (2, 2)]
    page, _, _ = build(m, tmp_path)
    assert "| local | QEMU (TCG) | Linux 6.1.0-57-amd64, 2 vCPUs | 4 GiB | 1024 MiB | 843 |" in page   # its own rows
    assert "(qemu-debian-1024-v2.png " in page   # and its own graph
    from generator.manifest import at_defaults
    assert [at_defaults(r) for r in records if r["memory_mib"] == 4096] == [True, False]  # not in the curves


# --- a record field: one line in RECORD, one where its value is known --------------------------------
def test_a_record_field_is_its_declaration_and_where_it_is_filled(monkeypatch, write_manifest, tmp_path):
    monkeypatch.setitem(results.RECORD, "host_load", results.Field((float, type(None)), False, True,
                                                                  "the host's load average when the point started"))
    probe = measure.MEASURERS["probe"]
    monkeypatch.setitem(measure.MEASURERS, "probe", lambda run, boot, kind: dict(probe(run, boot, kind), host_load=0.25))
    m = manifest(write_manifest, content="{% for r in data.records %}load {{ r.host_load }}\n{% endfor %}")
    records = sweep(m)
    assert all(r["status"] == "ok" and r["host_load"] == 0.25 for r in records)   # kept by the schema
    page, _, _ = build(m, tmp_path)
    assert page.count("load 0.25") == 2   # the post reads it (summary=True)
    bad = results.checked(dict(records[0], host_load="high"))
    assert bad["status"] == "error" and "host_load" in bad["reason"]   # and its type is checked


# --- a graph: a draw function, a figures function and its line in GRAPHS; a post that shows it -------
def _boot_png(xs: list, ys: list) -> bytes:
    plt = plots._pyplot()
    fig, ax = plt.subplots(figsize=(3, 2))
    try:
        ax.plot(xs, ys)
        return plots._png(fig)
    finally:
        plt.close(fig)


def _boot_figures(post: graphs.PostData) -> list[graphs.Figure]:
    pts = [p for s in post.series for p in s.measured]
    return [graphs.Figure("boot", f"{post.slug}-boot.png", "Boot time", "Seconds to boot against memory.",
                          ([p.memory_mib for p in pts], [p.records[0]["durations"]["total_s"] for p in pts]),
                          ("boot", *post.everything))]


def test_a_graph_is_its_declaration_and_a_page_that_shows_it(monkeypatch, write_manifest, tmp_path):
    monkeypatch.setattr(graphs, "GRAPHS", graphs.GRAPHS + [graphs.Graph("boot", _boot_figures, _boot_png)])
    shows = '{% import "macros.md.j2" as m %}{{ m.figure(figures["boot"]) }}\n'
    m = manifest(write_manifest, content=shows)
    sweep(m)
    page, report, site = build(m, tmp_path)
    png = site / "content/posts" / m.post.slug / f"{m.post.slug}-boot.png"
    assert f"({m.post.slug}-boot.png" in page and png.read_bytes()[:4] == b"\x89PNG"
    assert "boot" not in report.unshown_graphs and "lost" in report.unshown_graphs   # the page shows only it
    m2 = manifest(write_manifest, content="nothing shown\n")
    _, report, _ = build(m2, tmp_path / "again")
    assert "boot" in report.unshown_graphs   # a graph no post shows is named, not silently never drawn
    with pytest.raises(ValueError, match="no graph called"):
        graphs.render(("undeclared", ()))


# --- a guest kind: a GuestKind and its line in KINDS, its measuring's line in MEASURERS ---------------
class CloudKind(kinds.GuestKind):
    """A cloud image (qcow2 with a cloud-init seed), here claimed by its file name and staged as-is."""

    name = "cloud"

    def claims(self, guest) -> bool:
        return guest.kernel.endswith(".cloud")

    def stage(self, host, guest, *, manifest, cache_dir, note):
        return Staged(self, dict(PROBE))


def test_a_guest_kind_is_its_class_and_its_lines_in_the_registries(monkeypatch, write_manifest, tmp_path):
    cloud = CloudKind()
    monkeypatch.setattr(kinds, "KINDS", (cloud,) + kinds.KINDS)
    monkeypatch.setitem(measure.MEASURERS, "cloud", measure.measure)   # measured as the probe is, here
    image = tmp_path / "jammy.cloud"
    image.write_bytes(b"\0" * 512)
    m = manifest(write_manifest, guests=f"  - name: jammy\n    kernel: '{image}'\n")
    guest = m.guest("jammy")
    assert kinds.kind_of(guest) is cloud
    staged = cloud.stage(None, guest, manifest=m, cache_dir=tmp_path, note=print)
    records = sweep(m, staged)
    assert {r["guest_kind"] for r in records} == {"cloud"} and all(r["status"] == "ok" for r in records)
    assert kinds.kind_of_record(records[0]) is cloud and not cloud.bare   # published as a full system, not a probe
    page, _, _ = build(m, tmp_path)
    assert "| local | QEMU (TCG) | " in page
    monkeypatch.delitem(measure.MEASURERS, "cloud")
    with pytest.raises(ValueError, match="guest kind 'cloud' has no measuring"):
        sweep(m, staged)
