from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests: 300 examples each in `make test`; `make test-unit` (HYPOTHESIS_PROFILE=quick) runs 60
# to stay fast while you work.
settings.register_profile("full", max_examples=300, deadline=None)
settings.register_profile("quick", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "full"))

MANIFEST = """\
experiment: {name}
hosts:
  - name: local
    uri: embedded
    domain_type: {domain_type}
guests:
  - name: debian
    kernel: host
sweep:
  memory: {memory}
  current_memory: [1024 MiB]
  repeats: 1
timeouts:
  boot: 120s
  settle: 300s
  stable: 3s
  canary: {canary}
post:
  slug: {name}
  title: "Test: {name}"
  content: post.md
"""


@pytest.fixture
def write_manifest(tmp_path: Path):
    """Write a manifest (and an empty post source) into tmp_path; return its path."""
    def write(name: str = "unit", memory: str = "[1 GiB, 2 GiB]", domain_type: str = "qemu",
              canary: str = "30s", extra: str = "", text: str | None = None) -> Path:
        path = tmp_path / name / "experiment.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        body = text if text is not None else MANIFEST.format(name=name, memory=memory, domain_type=domain_type,
                                                             canary=canary) + textwrap.dedent(extra)
        path.write_text(body)
        (path.parent / "post.md").write_text("# {{ post.title }}\n")
        return path
    return write
