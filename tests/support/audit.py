"""The audit's model from the committed records, and a host behind a fake libvirt."""
from __future__ import annotations

import pytest

from generator import audit as au
from generator.model import load_model

from . import ROOT
from .fake_libvirt import FakeConn


@pytest.fixture(scope="module")
def model():
    return load_model(ROOT / "experiments")


def host(domains, name="kvm1"):
    conn = FakeConn(domains)
    return au.Target(name, "qemu:///system", lambda read_only: conn), conn
