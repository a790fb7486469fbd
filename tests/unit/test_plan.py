"""The points a manifest asks for (generator/plan.py): the cross product of the factors, --only, the
order of repeats, and a guest's own narrower sweep."""
from __future__ import annotations

import pytest

from generator.errors import UserError
from generator.manifest import load
from generator.plan import check_only, points, select
from tests.support.manifests import NARROW  # noqa: F401


def test_a_guests_sweep_narrows_its_points_only(write_manifest):
    m = load(write_manifest(text=NARROW.format(big="[4 GiB]")))
    got = sorted((p.guest, p.memory_mib, p.current_memory_mib) for p in points(m))
    assert [g for g in got if g[0] == "small"] == [("small", m_, c) for m_ in (1024, 2048, 4096)
                                                   for c in (512, 1024)]
    assert [g for g in got if g[0] == "big"] == [("big", 4096, 512), ("big", 4096, 1024)]


def test_plan_cross_product_and_order(write_manifest):
    m = load(write_manifest(memory="[4 GiB, 1 GiB, 512 MiB]", extra=""))
    pts = points(m)
    # 512 MiB < currentMemory 1024 MiB is left out; smallest memory first
    assert [(p.memory_mib, p.current_memory_mib) for p in pts] == [(1024, 1024), (4096, 1024)]
    assert pts[0].key == "local/debian/m1024-c1024-r1"
    path = pts[1].record_path("R")
    assert str(path) == "R/local/debian/memory-4096MiB-current-1024MiB-r1.json"
    assert select(pts, ["*m4096*"]) == [pts[1]]
    with pytest.raises(UserError, match="matches no point"):
        check_only(["nothing"], [pts])


def test_only_globs_match_whole_keys(write_manifest):
    text = write_manifest().read_text().replace("repeats: 1", "repeats: 12")
    pts = points(load(write_manifest(text=text)))
    r1 = [p.key for p in select(pts, ["local/debian/m1024-c1024-r1"])]
    assert r1 == ["local/debian/m1024-c1024-r1"]  # not r10, r11, r12
    assert len(select(pts, ["m1024-c1024-r1*"])) == 4  # r1, r10, r11, r12 when asked for
    assert {p.memory_mib for p in select(pts, ["*/m2048-*"])} == {2048}
    for bad in ("", "  ", "debian", "m1024"):  # empty, or a substring that used to select points
        with pytest.raises(UserError, match="--only"):
            check_only([bad], [pts])


def test_repeats_cover_the_range_first(write_manifest):
    text = write_manifest().read_text().replace("repeats: 1", "repeats: 2")
    m = load(write_manifest(text=text))
    assert [(p.memory_mib, p.repeat) for p in points(m)] == [(1024, 1), (2048, 1), (1024, 2), (2048, 2)]
