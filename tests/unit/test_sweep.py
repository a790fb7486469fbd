"""The sweep (generator/sweep.py) over fake hosts: scheduling in slots, the memory budget, resuming,
signals, a failing host and a failing point, without booting anything."""
from __future__ import annotations

from generator.sweep import slots_for


def test_local_slots_leave_the_nested_hosts_cores():
    spec = type("S", (), {"slots": 0})()
    assert slots_for(spec, {"cores": 2}, 1, None) == 2
    assert slots_for(spec, {"cores": 2}, 1, None, cores_taken=1) == 1
    assert slots_for(spec, {"cores": 2}, 1, None, cores_taken=4) == 1  # always one
