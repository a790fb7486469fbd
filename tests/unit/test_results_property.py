"""Property tests of the record writer (generator/results.py): every record and console-like
list survives a round trip. How many examples: the Hypothesis profile in tests/conftest.py."""
from __future__ import annotations

import json
import math

from hypothesis import given
from hypothesis import strategies as st

from generator import results

scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**63) |
           st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))


values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6) |
                      st.dictionaries(st.text(max_size=12), inner, max_size=6), max_leaves=30)


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b)


@given(st.dictionaries(st.text(max_size=12), values, max_size=8))
def test_dumps_round_trips_every_record(record):
    text = results.dumps(record)
    assert same(json.loads(text), record)
    assert text.endswith("\n")


@given(st.lists(st.text(alphabet=st.sampled_from('[] ",:0123456789.\\\n\t'), max_size=30), max_size=8))
def test_console_like_lists_survive(lines):
    record = {"dmesg": lines, "console_excerpt": list(reversed(lines))}
    assert json.loads(results.dumps(record)) == record
