"""Every number a post states, with the question of the records it answers.

A measured value leaves analysis.py as a `Claimed` number: an int or float that carries its query, a
small JSON tree a reader (and tests/unit/publish/test_claims.py) can answer again from the records
alone. Leaves:

  {"of": METRIC, "agg": "median"|"max"|"min"|"count", "where": {record field: value, ...}}
      the metric of every record matching `where`, aggregated (METRIC names a function of one record,
      see METRICS; records for which it is None are left out);
  {"law": "slope"|"step", "where": {...}, "domain_type": ..., "kernels": [...]}
      a figure of the kernel's sizing rules (laws.py) fitted to the records matching `where`;
  {"size": N}        a memory size the manifest swept (MiB), printed as a label;
  {"fact": SOURCE}   a number the prose states from outside the records (the 2012 post, the
                     kernel's source), with where it comes from.

Arithmetic in a template keeps the tree ({"op": "-", "args": [a, b]}), so "lost 181 MiB" is the
difference of two medians, not an unexplained 181. What a render prints through the number filters
is noted in the current ledger; the build writes it beside the post (site/claims/<slug>.json).
"""
from __future__ import annotations

import contextvars
import json
import operator
import re

_LEDGER: contextvars.ContextVar[list | None] = contextvars.ContextVar("claims_ledger", default=None)


class Claimed:
    """Mixin: a number with the query that produced it."""

    query: dict

    def _op(self, other, symbol: str, fn, swap: bool = False):
        if isinstance(other, bool) or not isinstance(other, (int, float)):
            return NotImplemented
        a, b = (other, self) if swap else (self, other)
        value = fn(_plain(a), _plain(b))
        return claimed(value, {"op": symbol, "args": [query_of(a), query_of(b)]})

    def __add__(self, o): return self._op(o, "+", operator.add)
    def __radd__(self, o): return self._op(o, "+", operator.add, True)
    def __sub__(self, o): return self._op(o, "-", operator.sub)
    def __rsub__(self, o): return self._op(o, "-", operator.sub, True)
    def __mul__(self, o): return self._op(o, "*", operator.mul)
    def __rmul__(self, o): return self._op(o, "*", operator.mul, True)
    def __truediv__(self, o): return self._op(o, "/", operator.truediv)
    def __rtruediv__(self, o): return self._op(o, "/", operator.truediv, True)
    def __floordiv__(self, o): return self._op(o, "//", operator.floordiv)
    def __neg__(self): return claimed(-_plain(self), {"op": "neg", "args": [self.query]})
    def __abs__(self): return claimed(abs(_plain(self)), {"op": "abs", "args": [self.query]})

    def __round__(self, digits=None):
        return claimed(round(_plain(self), digits), {"op": "round", "args": [self.query, digits]})


class ClaimedInt(Claimed, int):
    pass


class ClaimedFloat(Claimed, float):
    pass


def _plain(v):
    if isinstance(v, ClaimedInt):
        return int(v)
    if isinstance(v, ClaimedFloat):
        return float(v)
    return v


def claimed(value, query: dict):
    """value (int or float; None stays None) carrying `query`."""
    if value is None:
        return None
    obj = (ClaimedInt if isinstance(value, int) and not isinstance(value, bool) else ClaimedFloat)(value)
    obj.query = query
    return obj


def query_of(value):
    """A number's query, or {"const": n} where it is a constant of the template (a test allows only unit
    conversions and rounding digits as constants: any other number must be a fact() with its source)."""
    return value.query if isinstance(value, Claimed) else {"const": _plain(value)}


def leaf(of: str, where: dict, agg: str = "median") -> dict:
    return {"of": of, "agg": agg, "where": dict(sorted(where.items()))}


def fact(value, source: str):
    """A number from outside the records, with where it comes from (a template function): a number the
    content file writes itself, never one computed from the records (that one has its own query)."""
    if isinstance(value, Claimed):
        raise ValueError(f"fact({_plain(value)!r}, ...): the value comes from the records and has its own "
                         "question; print it as it is")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"fact({value!r}, ...): a fact is a number")
    if not str(source).strip():
        raise ValueError(f"fact({value!r}, ...): say where the number comes from")
    return claimed(value, {"fact": str(source)})


def setting(manifest, path: str):
    """A number of the manifest (e.g. 'sweep.repeats'), printed as a claim about the manifest."""
    import dataclasses

    value = manifest
    for part in str(path).split("."):
        # content may come from someone else: only the manifest's own declared fields, never Python's
        if not dataclasses.is_dataclass(value) or part not in {f.name for f in dataclasses.fields(value)}:
            raise ValueError(f"setting({path!r}): not a field of the manifest")
        value = getattr(value, part)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"setting({path!r}): not a number")
    return claimed(value, {"manifest": str(path)})


def size(mib: int):
    return claimed(mib, {"size": int(mib)})


class Ledger:
    """The numbers one render printed, in order, each once per (text, query)."""

    def __init__(self):
        self.entries: list[dict] = []
        self.unclaimed: list[str] = []
        self.names: set[str] = set()   # text from the manifest and records (labels, versions) that holds digits
        self.printed: dict[str, int] = {}  # how often each claimed text was printed
        self._seen: set = set()

    def note(self, text: str, value) -> None:
        if isinstance(value, Claimed):
            self.printed[text] = self.printed.get(text, 0) + 1
            frozen = json.dumps(value.query, sort_keys=True)  # a copy: nothing later can change what is listed
            key = (text, frozen)
            if key not in self._seen:
                self._seen.add(key)
                self.entries.append({"text": text, "value": _plain(value), "query": json.loads(frozen)})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            self.unclaimed.append(text)

    def to_json(self, slug: str) -> str:
        return json.dumps({"post": slug, "claims": self.entries, "names": sorted(self.names),
                           "printed": self.printed, "unclaimed": self.unclaimed}, indent=1, sort_keys=True) + "\n"


def note(text: str, value) -> str:
    ledger = _LEDGER.get()
    if ledger is not None:
        ledger.note(text, value)
    return text


def note_name(text: str) -> None:
    """Text printed from a value (a label, a version, a date): its digits are a name's, not a claim."""
    ledger = _LEDGER.get()
    # a name has letters: digits alone (or with separators and units) printed from a string are a number
    # that escaped its query, and stay on the page to be found
    if ledger is not None and any(c.isdigit() for c in text) \
            and not re.fullmatch(r"\s*\\?[-+]?\d[\d,]*(?:\.\d+)?\s*(?:[KMG]i?B|MB|GB|s)?\s*", str(text)):
        ledger.names.add(str(text))


class paused:
    """with paused(): render again without noting (the numbers were noted the first time)."""

    def __enter__(self):
        self._token = _LEDGER.set(None)

    def __exit__(self, *exc):
        _LEDGER.reset(self._token)
        return False


class recording:
    """with recording() as ledger: render ... (the numbers printed are in ledger)."""

    def __enter__(self) -> Ledger:
        self.ledger = Ledger()
        self._token = _LEDGER.set(self.ledger)
        return self.ledger

    def __exit__(self, *exc):
        _LEDGER.reset(self._token)
        return False
