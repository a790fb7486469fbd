"""Sizes and durations as libvirt writes them (generator/units.py)."""


import pytest

from generator.units import mib_label, parse_duration, parse_size


@pytest.mark.parametrize("text,expected", [
    ("1024 MiB", 1024**3), ("16G", 16 * 1024**3), ("512 KiB", 512 * 1024), ("1 GiB", 1024**3),
    ("2GB", 2 * 10**9), ("100 MB", 10**8), ("4 k", 4096), ("1.5 GiB", 1536 * 1024**2), ("1 TiB", 1024**4),
])
def test_sizes_in_libvirt_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad,fragment", [
    ("16X", "unknown unit"), ("MiB", "not a size"), (1024, "no unit"), ("", "not a size"), (True, "not a size"),
    ([1], "not a size"),
])
def test_bad_sizes_say_why(bad, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_size(bad)


def test_durations():
    assert parse_duration("90s") == 90
    assert parse_duration("5m") == 300
    assert parse_duration(12) == 12
    assert parse_duration("500ms") == 0.5
    with pytest.raises(ValueError):
        parse_duration("soon")
    with pytest.raises(ValueError):
        parse_duration(0)


def test_mib_labels():
    assert mib_label(1024) == "1 GiB"
    assert mib_label(32768) == "32 GiB"
    assert mib_label(1536) == "1536 MiB"
