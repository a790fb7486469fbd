"""The rooms that docs/extending.md's "Extending" promises: each kind of addition touches the files it names, and the
structure that makes that true (no import cycle, a DomainSpec field per factor, hypervisors that
answer for themselves) holds."""
from __future__ import annotations

import ast
import dataclasses
import re

import pytest

from generator import hypervisors
from generator import manifest as manifest_mod
from generator import results
from generator.domain import DomainSpec
from generator.manifest import FACTORS, Factor, add_factor, sweep_schema
from tests.support import ROOT  # noqa: F401


def extending_section() -> str:
    text = (ROOT / "docs" / "extending.md").read_text()
    return text.split("## Extending", 1)[1].split("\n## ", 1)[0]


PACKAGE = ROOT / "generator"


def import_graph() -> dict[str, set[str]]:
    """generator's modules and the generator modules each imports (relative imports, any depth)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                # 'from .guests import sources' imports the module guests.sources as well as the package
                targets = ([base + node.module.split(".")] if node.module else []) + \
                    [base + (node.module.split(".") if node.module else []) + [a.name] for a in node.names]
                for t in targets:
                    while t and ".".join(t) not in modules:
                        t = t[:-1]
                    if t and ".".join(t) != name:
                        deps.add(".".join(t))
        graph[name] = deps
    return graph


def test_every_file_extending_names_exists():
    named = set(re.findall(r"`((?:generator|templates|tests)/[^`\s]+)`", extending_section()))
    assert len(named) >= 8
    missing = [n for n in named if not (ROOT / n).exists()]
    assert not missing, f"docs/extending.md's Extending names files that do not exist: {missing}"


def test_no_import_cycle():
    graph = import_graph()
    assert "generator.hosts.nested_xen" in graph and "generator.hypervisors.xen" in graph
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(node):] + [node]))
        if node in done:
            return
        for dep in graph[node]:
            visit(dep, path + [node])
        done.add(node)

    for node in graph:
        visit(node, [])


def test_no_cycle_between_packages():
    """Stronger than no module cycle: hosts/, hypervisors/, guests/ and publish/ taken as one node each,
    the layers still import one way only (guests/ never imports what measures or schedules it)."""
    def node(module: str) -> str:
        parts = module.split(".")
        return ".".join(parts[:2]) if len(parts) > 2 or (len(parts) == 2 and parts[1] in PACKAGES) else module
    edges: dict[str, set[str]] = {}
    for a, deps in import_graph().items():
        edges.setdefault(node(a), set()).update(node(b) for b in deps if node(b) != node(a))
    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for b in edges.get(todo.pop(), ()):
                if b not in seen:
                    seen.add(b)
                    todo.append(b)
        return seen
    assert not [a for a in edges if a in reaches(a)], {a: sorted(edges[a]) for a in edges if a in reaches(a)}


PACKAGES = {"hosts", "hypervisors", "guests", "publish"}


IDENTITY_RE = re.compile(r"""(==|!=|\bin\b)\s*\(?["'](xen|libxl|Xen|kvm|qemu|system|probe|virtio)["']"""
                         r"""|startswith\(\s*["'](xen|libxl|Xen|kvm|qemu)["']""")


ASKED_RE = re.compile(r"""\bis_xen\b|guest_kind\s*[!=]=|domain_type\s*[!=]=\s*["'](?!auto)""")


def test_no_identity_by_string_outside_the_registries():
    """Code, templates and content ask a hypervisor, a guest kind or a series what it is (its
    properties), never compare a domain type, a kind or a balloon model with a name. Record fields named
    after Xen (xen, xen_balloon) are data; the registries themselves (hypervisors/, the nested hosts'
    flavors) name what they declare."""
    files = [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] != "hypervisors"
             and not p.name.startswith("nested_")]
    files += sorted((ROOT / "templates").glob("*.j2")) + sorted((ROOT / "content").glob("*.md"))
    offenders = []
    for path in files:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if IDENTITY_RE.search(line) or ASKED_RE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()[:160]}")
    assert not offenders, offenders
    assert IDENTITY_RE.search('if s.domain_type == "kvm":') and IDENTITY_RE.search("{% if kind == 'system' %}")


def test_every_factor_has_a_domain_spec_field():
    fields = {f.name for f in dataclasses.fields(DomainSpec)}
    assert all(f.name in fields for f in FACTORS)


def test_a_factor_without_a_spec_field_is_named():
    with pytest.raises(TypeError, match="no field for factor"):
        DomainSpec.for_point({"memory_mib": 1024, "current_memory_mib": 1024, "hugepages": True}, name="x",
                             domain_type="qemu", vcpus=1, kernel="", initrd="", cmdline="", console="",
                             balloon_model="virtio", stats_period=1)


@pytest.mark.parametrize("hv", hypervisors.HYPERVISORS, ids=lambda h: h.name)
def test_each_hypervisor_answers_for_itself(hv):
    assert hv.name and hv.title and hv.domain_types and hv.uri_schemes and hv.balloon in hv.balloons
    for dt in hv.domain_types:
        assert hypervisors.for_domain_type(dt) is hv and hv.label(dt)
    spec = DomainSpec(name="mb-x", domain_type=hv.domain_types[0], memory_mib=4096, current_memory_mib=1024,
                      vcpus=1, kernel="/k", initrd="/i", cmdline="c", console="/c.log", balloon_model=hv.balloon,
                      stats_period=1)
    xml = hv.render(spec)
    assert "<name>mb-x</name>" in xml and str(4096 * 1024) in xml
    for scheme in hv.uri_schemes:
        assert hypervisors.for_host(f"{scheme}+ssh://h/system") is hv


def test_a_new_factor_is_refused_where_its_hypervisor_lacks_it(write_manifest):
    """A hypervisor that lists the values it supports refuses the others through the manifest, by name."""
    before = list(manifest_mod.FACTORS)
    add_factor(Factor(name="hugepages", convert=manifest_mod._values(manifest_mod._flag), kind=bool, default=False,
                      words={True: "hp", False: ""}, labels={True: "huge pages", False: "no huge pages"},
                      doc="back guest RAM with huge pages"))
    xen = hypervisors.for_domain_type("xen")
    try:
        xen.factors = {**type(xen).factors, "hugepages": (False,)}
        text = write_manifest().read_text().replace("uri: embedded", "uri: 'xen:///system'").replace(
            "domain_type: qemu", "domain_type: xen").replace("repeats: 1", "repeats: 1\n  hugepages: [false, true]")
        from generator.errors import ManifestError
        with pytest.raises(ManifestError, match=r"sweep.hugepages: huge pages: host\(s\) local run Xen"):
            manifest_mod.load(write_manifest(text=text))
    finally:
        del xen.factors
        manifest_mod.FACTORS[:] = before
        manifest_mod.Sweep = sweep_schema(before)


def test_record_fields_are_declared_once():
    from generator.publish import post
    assert "SUMMARY_FIELDS" not in (PACKAGE / "publish/post.py").read_text()  # no list of its own
    assert set(results.summary_fields()) == {n for n, f in results.RECORD.items() if f.summary}
    assert all(f.doc for f in results.RECORD.values())


def test_the_sweep_asks_the_guest_kind():
    from generator import kinds
    from generator.manifest import Guest

    sweep = (PACKAGE / "sweep.py").read_text()
    assert "isinstance(staged" not in sweep and "is_system" not in sweep and "kind_of(" in sweep
    assert kinds.kind_of(Guest(name="p")).name == "probe"
    assert kinds.kind_of(Guest(name="s", image="debian:bookworm")).name == "system"
