"""Small manifests for tests that feed one key at a time."""
from __future__ import annotations

from pathlib import Path

BASE = """experiment: x
hosts: [{name: local}]
guests: [{name: g}]
sweep: {memory: [1 GiB], current_memory: [1024 MiB]}
post: {slug: x, title: t, content: p.md}
"""


def write(tmp_path, text: str) -> Path:
    folder = tmp_path / "x"
    folder.mkdir(exist_ok=True)
    (folder / "p.md").write_text("x\n")
    path = folder / "experiment.yaml"
    path.write_text(text)
    return path


def with_host(tmp_path, host: str) -> Path:
    return write(tmp_path, BASE.replace("hosts: [{name: local}]", f"hosts: [{host}]"))


def with_guest(tmp_path, guest: str) -> Path:
    return write(tmp_path, BASE.replace("guests: [{name: g}]", f"guests: [{guest}]"))


# A guest that narrows the sweep to some sizes: `big` is formatted in.
NARROW = """\
experiment: narrow
hosts: [{{name: local, uri: embedded, domain_type: qemu}}]
guests:
  - name: small
  - name: big
    sweep: {{memory: {big}}}
sweep: {{memory: [1 GiB, 2 GiB, 4 GiB], current_memory: [512 MiB, 1 GiB]}}
post: {{slug: narrow, title: Narrow}}
"""

XEN_HOST = """
hosts:
  - name: local
    uri: embedded
  - name: xen
    kind: nested-xen
    nested: {nested}
"""


def manifest_with(write_manifest, hosts: str, extra: str = "", balloon: str = "auto"):
    text = write_manifest("x").read_text()
    head, rest = text.split("guests:", 1)
    head = head.split("hosts:")[0] + hosts.strip() + "\n"
    return write_manifest("x", text=head + "guests:" + rest + f"balloon:\n  model: {balloon}\n" + extra)
