"""Every number a committed post states is in its claims list (site/claims/<slug>.json), and every claim
is answered again here from the records alone: the records are read and selected by this file, the
arithmetic is redone from the claim's query, and the figures of the kernel's rules and of predict are
recomputed from the records they name. Nothing here renders a template."""
from __future__ import annotations

import json
import math
import operator
import re
import statistics
from pathlib import Path

import pytest

from generator import laws, results
from generator.manifest import load as load_manifest
from generator.plan import points, results_dir
from generator.predict import margin_mib, predict, reserve_kib, used_kib
from generator.publish import series
from generator.units import mib_label

ROOT = Path(__file__).resolve().parents[3]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*/experiment.yaml"))


MANIFEST_OF: dict = {}   # id(records list) -> its manifest (a claim may state a manifest setting)


def _records(manifest) -> list:
    """Every record of the manifest's planned points, read as a reader would (migrations applied)."""
    out = []
    MANIFEST_OF[id(out)] = manifest
    folder = results_dir(manifest)
    for p in points(manifest):
        found = results.read_point(p, folder)
        if found:
            out.append(results.as_record(found[0]))
    return out


def _died(r):
    return r.status in ("oom", "panic")


def _set_aside(r):
    boot = r.memtotal_boot_kib
    if isinstance(boot, int) and 0 < boot <= r.memory_mib * 1024:
        return r.memory_mib - boot / 1024
    return series.reserved_mib(r)


def _timeline_low(r):
    samples = [s[1] for s in r.balloon_timeline or [] if isinstance(s, list) and len(s) >= 2
               and isinstance(s[1], int) and s[1] > 0]
    return min(samples) / 1024 if samples and _died(r) else None


def _inflating(r):
    if not _died(r):
        return None
    v = (r.phases or {}).get("inflation_host_s")
    return v if v else series.timeline_facts(r)["balloon_moving_s"]


def _metric(of: str):
    """A function of one record (None: the record says nothing of it)."""
    fixed = {
        "seen_mib": series.seen_mib,
        "set_aside_mib": _set_aside,
        "balloon_floor_mib": _timeline_low,
        "inflating_s": _inflating,
        "reserved_mib": series.reserved_mib,
        "swiotlb_mib": series.swiotlb_mib,
        "pv_map_end_mib": series.pv_map_end_mib,
        "reserve_mib": lambda r: None if (v := reserve_kib(r.zone_reserves)) is None else v / 1024,
        "used_at_boot_mib": lambda r: None if (v := used_kib(r)) is None else v / 1024,
        "margin_mib": margin_mib,
        "balloon_actual_mib": lambda r: r.balloon["actual"] / 1024 if isinstance((r.balloon or {}).get("actual"), int)
        else None,
        "xen_ballooned_out_mib": lambda r: ((r.xen_balloon.get("low_kb", 0) + r.xen_balloon.get("high_kb", 0)) / 1024
                                            if r.xen_balloon else None),
    }
    if of in fixed:
        return fixed[of]
    if of == "record":
        return lambda r: 1
    if of in ("cross_check", "cross_check_agrees"):
        return lambda r: (1 if r.cross_check and (of == "cross_check" or r.cross_check.get("agree")) else None)
    kind, _, key = of.partition(":")
    if kind == "field":
        return lambda r: r.get(key)
    if kind in ("nested", "xen", "plug"):
        return lambda r: (r.get(kind) or {}).get(key)
    if kind == "item_kib":
        return lambda r: r.set_aside_kib.get(key, 0) if isinstance(r.set_aside_kib, dict) else None
    if kind == "killed":
        return lambda r: 1 if key in (list(r.oom_kills or []) or
                                      re.findall(r"Killed process \d+ \(([^)]+)\)", r.reason or "")) else None
    if kind == "panic":
        return lambda r: 1 if f"Kernel panic - not syncing: {key}" in (r.reason or "") else None
    if kind == "item":
        return lambda r: r.set_aside_kib.get(key, 0) / 1024 if isinstance(r.set_aside_kib, dict) else None
    if kind == "meminfo":
        return lambda r: v / 1024 if isinstance(v := (r.meminfo or {}).get(key), (int, float)) else None
    if kind == "free":
        return lambda r: v if isinstance(v := (r.free_m or {}).get(key), (int, float)) else None
    raise AssertionError(f"a claim asks for {of!r}, which this test does not know")


def _select(records, where: dict) -> list:
    """The records whose fields equal `where`'s values (a list: any of them)."""
    return [r for r in records
            if all(r.get(k) in v if isinstance(v, list) else r.get(k) == v for k, v in where.items())]


def _per_point(records, fn) -> dict:
    groups: dict = {}
    for r in records:
        key = tuple(repr(r.get(k)) for k in series.IDENTITY)
        if (v := fn(r)) is not None:
            groups.setdefault(key, []).append(v)
    return groups


# The only numbers a claim's arithmetic may hold besides measured values and facts: unit conversions and
# zero (a template adds 0.0 to turn -0.0 into 0.0). Any other is a number the template made up.
UNIT_CONSTANTS = (0, 1, 1024, 1048576)


def answer(query, records):
    """The value of a claim's query, from the records alone."""
    if not isinstance(query, dict):
        return query      # a rounding's digits
    if "const" in query:
        assert query["const"] in UNIT_CONSTANTS, (f"{query['const']!r} in a claim's arithmetic is neither a measured "
                                                  "value nor a fact with its source")
        return query["const"]
    if "op" in query:
        args = [answer(a, records) for a in query["args"]]
        op = query["op"]
        if op == "round":
            return round(args[0], args[1])
        if op in ("neg", "abs"):
            return -args[0] if op == "neg" else abs(args[0])
        if op == "count":   # how many of the listed queries the records answer
            return sum(1 for a in args if a is not None)
        a, b = args
        return {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
                "//": operator.floordiv}[op](a, b)
    if "law" in query:
        chosen = _select(records, query["where"])
        fitted = laws.fit(chosen, query["domain_type"], tuple(query["kernels"]))
        figure = query["law"]
        if figure == "slope":
            return laws.marginal_per_gib(fitted)
        if figure == "step":
            return fitted.bounce_kib / 1024
        if figure == "page_descriptors_per_gib":
            return 16 + fitted.page_descriptors[1] / 1024
        if figure == "worst_kib":
            current = chosen[0].current_memory_mib
            model = chosen[0].get("memory_model") or "balloon"
            return max((abs(fitted.set_aside_kib(laws.guest_of(r.memory_mib, min(current, r.memory_mib), model,
                                                                query["domain_type"]))
                            - (r.memory_mib * 1024 - r.memtotal_boot_kib))
                        for r in _select(records, query["over"]) if isinstance(r.memtotal_boot_kib, int)), default=0.0)
        if figure == "nothing_left_gib":
            current = chosen[0].current_memory_mib
            model = chosen[0].get("memory_model") or "balloon"
            lost = lambda mib: fitted.set_aside_kib(laws.guest_of(mib, min(current, mib), model,  # noqa: E731
                                                                  query["domain_type"])) / 1024
            mib = current
            while lost(mib) < current and mib < 1 << 24:   # the first MiB (of 1 MiB steps, coarse to fine)
                mib *= 2
            lo, hi = mib // 2, mib
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if lost(mid) < current else (lo, mid)
            return hi / 1024
        raise AssertionError(f"unknown law figure {figure!r}")
    if "of" in query:
        chosen = _select(records, query["where"])
        fn = _metric(query["of"])
        values = [v for r in chosen if (v := fn(r)) is not None]
        agg = query["agg"]
        if agg == "one":
            assert len(set(map(repr, values))) == 1, f"the records disagree on {query}: {sorted(set(map(repr, values)))}"
            return values[0]
        if agg == "distinct":
            return len(set(map(repr, values)))
        if agg == "most_per_point":
            return max((len(v) for v in _per_point(chosen, fn).values()), default=0)
        if agg == "fewest_per_point":
            return min((len(v) for v in _per_point(chosen, fn).values()), default=0)
        if agg == "widest_per_point":
            return max((max(v) - min(v) for v in _per_point(chosen, fn).values()), default=0)
        if agg == "min":
            return min(values)
        if agg == "max":
            return max(values, default=0 if query["of"] == "swiotlb_mib" else None)
        if agg == "count":
            return len(values)
        assert values, f"no record answers {query}"
        return statistics.median(values)
    if "predict" in query:
        asked = query["predict"]
        got = predict(_select(records, query["where"]), asked["guest"], asked["memory_mib"], asked["current_mib"],
                      asked["need_mib"])
        return getattr(got, query["field"])
    if "sizing" in query:
        from generator.predict import sizing_table

        asked = query["sizing"]
        rows = [row for row in sizing_table(_select(records, query["where"]), asked["need_mib"])
                if row["domain_type"] == asked["domain_type"] and row["kernel"] == asked["kernel"]]
        assert len(rows) == 1, f"no one sizing row for {asked}"
        cell = next(z for z in rows[0]["sizes"] if z["current_memory_mib"] == query["current"])
        return cell[query["field"]]
    if "outcomes" in query:
        from generator.predict import check_outcomes

        checked = check_outcomes(_select(records, query["where"]))
        if query["outcomes"] in ("n_missed", "n_borderline"):
            return len(checked[query["outcomes"][2:]])
        got = checked[query["outcomes"]]
        return got[query["why"]] if "why" in query else got
    if "manifest" in query:
        value = MANIFEST_OF[id(records)]
        for part in query["manifest"].split("."):
            value = getattr(value, part)
        return value
    if "size" in query:
        sizes = {r.memory_mib for r in records} | {r.current_memory_mib for r in records} | {r.plugged_mib for r in records}
        assert query["size"] in sizes, f"{query['size']} MiB is no size the records measured"
        return query["size"]
    if "fact" in query:
        raise AssertionError("a fact is not recomputed")
    raise AssertionError(f"a claim's query of no known kind: {query}")


def texts_of(value) -> set[str]:
    """How a post may print a number."""
    out = {str(value), mib_label(value) if isinstance(value, int) or float(value).is_integer() else ""}
    out |= {f"{value:,.{d}f}" for d in range(4)}
    if isinstance(value, (int, float)) and float(value).is_integer():
        out.add(mib_label(int(value)))
    return out


def check_claims(manifest, claims_doc: dict, records) -> list[str]:
    """What is wrong with a post's claims against its records (empty: nothing)."""
    problems = []
    for c in claims_doc["claims"]:
        if c["text"] not in texts_of(c["value"]):
            problems.append(f"{c['text']!r} is not how {c['value']!r} prints")
        if "fact" in c["query"]:
            if not c["query"]["fact"].strip():
                problems.append(f"{c['text']!r}: a fact with no source")
            continue
        try:
            got = answer(c["query"], records)
        except (AssertionError, TypeError, ValueError, AttributeError, ZeroDivisionError) as e:
            problems.append(f"{c['text']!r}: {e}")
            continue
        if got is None or not math.isclose(float(got), float(c["value"]), rel_tol=1e-9, abs_tol=1e-9):
            problems.append(f"{c['text']!r} ({c['value']!r}) but the records give {got!r} for {c['query']}")
    return problems


# A number as a reader reads it: digits with thousands separators and decimals, a sign where one is
# printed (Markdown escapes a leading '-' as '\\-'); not the digits of a word, a version, a path or a hex value.
_DIGITS = re.compile(r"\d[\d,]*(?:\.\d+)?")


def numbers(text: str) -> list[tuple[str, int]]:
    """(token, position) of every number in `text`: '1-32' is 1 and 32, '-4' (after a space) is -4."""
    out = []
    text = re.sub(r"\d+(?:\.\d+){2,}(?:[-+~][\w.+~-]*)?", lambda m: " " * len(m.group(0)), text)  # versions
    for m in _DIGITS.finditer(text):
        token, start, end = m.group(0).rstrip(",."), m.start(), m.start() + len(m.group(0).rstrip(",."))
        before, after = text[start - 1:start], text[end:end + 1]
        if before and (before.isalpha() or before in "_./#x+") or (after and (after.isalpha() or after in "_/")):
            if not re.fullmatch(r"[KMG]", after or "-"):   # 16GiB, 300MiB: a number with its unit
                continue
        if before == "-" and not text[start - 2:start - 1].isalnum():
            token = "-" + token
        out.append((token, start))
    return out


def _cut(pattern: str, text: str, flags=0) -> tuple[str, list[str]]:
    cut = []

    def keep(m):
        cut.append(m.group(0))
        return " "
    return re.sub(pattern, keep, text, flags=flags), cut


def regions(page: str) -> tuple[str, str]:
    """(the prose a reader reads as sentences, tables and lists; the page's code, whose numbers the template may
    have printed as claims too). Image descriptions, link targets and HTML are in neither; nor is the front matter (its Description repeats the answer)
    nor the update log: the last section, '## What changed', is history generated by updates.py from git (each
    line compares the records with a named commit; `compare` and test_updates.py recompute it)."""
    text = re.sub(r"\A\+\+\+\n.*?\n\+\+\+\n", "", page, flags=re.S).replace("\\-", "-")
    heads = [m.start() for m in re.finditer(r"^## What changed$", text, flags=re.M)]
    assert len(heads) <= 1, "one update log, at the end"
    if heads:
        assert "\n## " not in text[heads[0] + 3:], "the update log is the last section"
        text = text[:heads[0]]
    code = []
    for pattern, flags in ((r"^(```|~~~).*?^\1", re.S | re.M), (r"(`+)[^\n]*?\1", 0)):
        text, cut = _cut(pattern, text, flags)
        code += cut
    # an image's description and title (written by analysis.py from the same medians), a link's target, HTML
    for pattern in (r'!\[(?:[^\]\\]|\\.)*\]\([^\s)]+(?: "[^"]*")?\)', r"(?<=\])\([^)\n]*\)", r"<[^>\n]+>"):
        text, _ = _cut(pattern, text)
    return text, "\n".join(code)


def prose(page: str) -> str:
    return regions(page)[0]


def unlisted_numbers(page: str, claims_doc: dict) -> list[str]:
    """Numbers in the page's prose that no claim accounts for: each number must have been printed as a claim
    at least as often as it appears (less what the page shows of it outside its prose), or be part of a
    name printed from a record or the manifest (a label, a version: text with letters, stating no amount)."""
    text, other = regions(page)
    names = sorted((n for n in claims_doc["names"] if not re.search(r"\d[\d,.]* ?(?:[KMG]iB|MB)\b", n)),
                   key=len, reverse=True)
    for n in names:
        text = re.sub(rf"(?<![\w.,]){re.escape(n)}(?![\w])", " ", text)
        other = re.sub(rf"(?<![\w.,]){re.escape(n)}(?![\w])", " ", other)
    allowed: dict[str, int] = {}
    for printed, n in claims_doc["printed"].items():
        key = re.sub(r" [KMG]iB$", "", printed)
        allowed[key] = allowed.get(key, 0) + n
    # Not subtracted: numbers in code. A code span holds the template's own text (a command's example sizes)
    # beside printed claims, and the two cannot be told apart there; so a claim printed both in code and in
    # prose allows one more occurrence in prose than it should (a known limit of this check).
    found, used = [], {}
    for token, at in numbers(text):
        used[token] = used.get(token, 0) + 1
        if used[token] <= allowed.get(token, 0):
            continue
        line = text[text.rfind("\n", 0, at) + 1: text.find("\n", at)]
        found.append(f"{token!r} (printed as a claim {allowed.get(token, 0)} time(s)) in: {line.strip()[:160]}")
    return found + [f"{t!r} printed with no question of the records (unclaimed)" for t in claims_doc["unclaimed"]]


def _posts():
    for path in EXPERIMENTS:
        m = load_manifest(path)
        slug = m.post.slug
        page = ROOT / "site" / "content" / "posts" / slug / "index.md"
        claims_file = ROOT / "site" / "claims" / f"{slug}.json"
        if page.exists():
            yield pytest.param(m, page, claims_file, id=slug)


@pytest.mark.parametrize("manifest,page,claims_file", list(_posts()))
def test_every_claim_is_answered_again_from_the_records(manifest, page, claims_file):
    doc = json.loads(claims_file.read_text())
    assert doc["claims"], "a post with data states numbers"
    assert check_claims(manifest, doc, _records(manifest)) == []


@pytest.mark.parametrize("manifest,page,claims_file", list(_posts()))
def test_every_number_in_the_prose_is_a_claim(manifest, page, claims_file):
    doc = json.loads(claims_file.read_text())
    assert unlisted_numbers(page.read_text(), doc) == []


def _ballooning():
    m = load_manifest(ROOT / "experiments" / "memory-ballooning" / "experiment.yaml")
    page = ROOT / "site" / "content" / "posts" / m.post.slug / "index.md"
    doc = json.loads((ROOT / "site" / "claims" / f"{m.post.slug}.json").read_text())
    return m, page.read_text(), doc


def test_a_planted_wrong_reading_is_caught():
    """A point's free -m totals moved by 7 MiB: the claim that rests on them no longer recomputes."""
    m, _, doc = _ballooning()
    records = _records(m)
    claim = next(c for c in doc["claims"] if c["query"].get("of") == "seen_mib" and c["query"]["agg"] == "median")
    for target in _select(records, claim["query"]["where"]):   # every repeat, so the median moves too
        target["free_m"] = {**target["free_m"], "total": target["free_m"]["total"] + 7}
    problems = check_claims(m, doc, records)
    assert any(p.startswith(repr(claim["text"])) and "the records give" in p for p in problems), problems


def test_a_planted_number_in_the_prose_is_caught():
    """A number changed in the page, and a sentence added with one: neither is in the claims list."""
    _, page, doc = _ballooning()
    assert unlisted_numbers(page, doc) == []
    body = prose(page)
    once = next(t for t, n in doc["printed"].items() if n == 1 and re.fullmatch(r"\d{3}", t)
                and len(re.findall(rf"(?<![\d,.]){t}(?![\d,.])", body)) == 1)
    wrong = next(str(v) for v in range(int(once) + 1, int(once) + 100) if str(v) not in doc["printed"])
    planted = re.sub(rf"(?<![\d,.]){once}(?![\d,.])", wrong, page, count=1)
    assert planted != page
    assert any(repr(wrong) in p for p in unlisted_numbers(planted, doc))
    added = page.replace("## Where it goes", "The guest saw 12,345 MiB.\n\n## Where it goes", 1)
    assert any("'12,345'" in p for p in unlisted_numbers(added, doc))


def test_arithmetic_keeps_the_question():
    from generator.publish.claims import claimed, query_of

    a = claimed(961.0, {"of": "seen_mib", "agg": "median", "where": {"memory_mib": 1024}})
    b = claimed(353, {"of": "seen_mib", "agg": "median", "where": {"memory_mib": 32768}})
    lost = 1024 - b
    assert lost == 671 and query_of(lost) == {"op": "-", "args": [{"const": 1024}, b.query]}
    assert query_of(a - b) == {"op": "-", "args": [a.query, b.query]}
    assert query_of(sum([a, b])) == {"op": "+", "args": [{"op": "+", "args": [{"const": 0}, a.query]}, b.query]}
    assert query_of(abs(-a)) == {"op": "abs", "args": [{"op": "neg", "args": [a.query]}]}
    assert answer({"op": "-", "args": [{"const": 1024}, {"fact": "x"} and {"const": 1}]}, []) == 1023
    # a number the template made up is no unit conversion: `p * 0 + 999` or a hard-coded currentMemory
    assert query_of(a * 0 + 999)["args"][1] == {"const": 999}
    with pytest.raises(AssertionError, match="neither a measured value nor a fact"):
        answer({"op": "+", "args": [{"const": 0}, {"const": 999}]}, [])


def test_the_content_cannot_read_or_rewrite_a_claims_question_or_launder_a_number():
    from generator.publish import claims
    from generator.publish.templating import jinja_env

    env = jinja_env(ROOT / "content")
    p = claims.claimed(353.0, {"of": "seen_mib", "agg": "median", "where": {}})
    for source in ("{{ p.query }}", "{% do p.query.update({'fact': 'mine'}) %}", "{{ fact(p, 'a source') }}",
                   "{{ fact(12, ' ') }}"):
        with pytest.raises(Exception) as e:
            with claims.recording():
                env.from_string(source).render(p=p)
        assert type(e.value).__name__ in ("SecurityError", "ValueError"), source
    with claims.recording() as ledger:  # made a string, it is no name: its digits stay on the page to be found
        out = env.from_string("It saw {{ '%d' % 999 }} MiB and {{ (p | int) }} MiB; {{ p | num }} MiB.").render(p=p)
    assert not ledger.names and ledger.unclaimed == ["353"] and ledger.printed == {"353": 1}
    doc = {"claims": ledger.entries, "names": sorted(ledger.names), "printed": ledger.printed,
           "unclaimed": ledger.unclaimed}
    found = unlisted_numbers(out, doc)
    assert any("'999'" in f for f in found) and any("unclaimed" in f for f in found)


def test_signs_ranges_and_units_are_read_as_a_reader_reads_them():
    got = [t for t, _ in numbers("a \\-4 KiB change, 1-32 GiB, 16GiB, x86, v1045, 6.1.0-57, 0x10a, 1,024.5.")]
    assert got == ["-4", "1", "32", "16", "1,024.5"]
    assert [t for t, _ in numbers("a -4 KiB change")] == ["-4"]


def test_a_content_file_gets_only_the_manifests_own_numbers():
    """setting() walks declared manifest fields only: a content file from someone else reaches no Python."""
    from generator.publish.claims import setting

    m, _, _ = _ballooning()
    assert setting(m, "sweep.repeats") == m.sweep.repeats
    for path in ("__class__", "sweep.__class__.__init__", "path", "sweep.memory", "hosts", "experiment"):
        with pytest.raises(ValueError):
            setting(m, path)


# Sentences a post says without a number, gated on what the records show: each is answered again here.
EXACT_PLUG = "In every case `MemTotal` grew by exactly what was plugged and went back to what it was once it was taken out."


def _every_plug_exact(records) -> bool | None:
    """From each plugged boot (not the medians the post tabulates): MemTotal grew by what was plugged and
    came back to where it started. None when no boot was plugged and unplugged."""
    done = [r for r in records if r.status == "ok" and isinstance(r.plug, dict) and "unplug_s" in r.plug]
    if not done:
        return None
    return all(r.plug["memtotal_plugged_kib"] - r.plug["memtotal_before_kib"] == r.plugged_mib * 1024
               and r.plug["memtotal_unplugged_kib"] == r.plug["memtotal_before_kib"] for r in done)


@pytest.mark.parametrize("manifest,page,claims_file", list(_posts()))
def test_the_plug_sentence_is_said_only_where_every_boot_shows_it(manifest, page, claims_file):
    said = EXACT_PLUG in " ".join(page.read_text().split())
    exact = _every_plug_exact(_records(manifest))
    assert not said or exact, "the post says every plug was exact; a record shows otherwise (or none was plugged)"
    if exact:
        assert said, "every plug was exact, and the post does not say so"


def test_a_plug_that_came_back_short_is_caught():
    m = load_manifest(ROOT / "experiments" / "the-fix" / "experiment.yaml")
    records = _records(m)
    assert _every_plug_exact(records) is True
    short = next(r for r in records if isinstance(r.plug, dict) and "unplug_s" in r.plug)
    plug = dict(short.plug, memtotal_unplugged_kib=short.plug["memtotal_before_kib"] - 4)
    planted = [results.as_record(dict(short, plug=plug)) if r is short else r for r in records]
    assert _every_plug_exact(planted) is False


def test_seen_is_what_the_guest_printed_or_its_memtotal_less_the_balloon():
    """The claims above recompute with the library's per-record reading of what the guest saw (`seen_mib`),
    so that reading is checked here on its own, against other fields of the raw JSON: `free -m`'s total as
    the probe printed it, or, with autodeflate (the balloon's pages stay in MemTotal), /proc/meminfo's
    MemTotal less the balloon the host reports, to the nearest MiB."""
    checked = autodeflate = 0
    for path in sorted((ROOT / "experiments").glob("*/results/**/*.json")):
        raw = json.loads(path.read_text())
        if raw.get("status") != "ok" or not isinstance(raw.get("free_m"), dict):
            continue
        seen = series.seen_mib(raw)
        model = raw.get("memory_model") or "balloon"
        actual = (raw.get("balloon") or {}).get("actual")
        if raw.get("autodeflate") and model == "balloon" and actual:
            memtotal = raw["meminfo"]["MemTotal"]
            balloon_kib = raw["memory_mib"] * 1024 - actual
            assert seen == math.floor((memtotal - balloon_kib) / 1024 + 0.5), path
            autodeflate += 1
        else:
            assert seen == raw["free_m"]["total"], path
        checked += 1
    assert checked >= 200 and autodeflate >= 8, (checked, autodeflate)
