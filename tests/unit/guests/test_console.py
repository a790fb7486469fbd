"""Reading a guest's console (generator/guests/console.py): the probe's markers and sections, `free`
and meminfo as procps and busybox print them, hostile numbers, and the excerpt a failed point keeps."""
from __future__ import annotations

from generator.guests.console import Console, parse_free, parse_meminfo
from generator.guests.probe import MARK

FREE = """              total        used        free      shared  buff/cache   available
Mem:            843          26         806           2          11         741
Swap:             0           0           0"""


def test_console_markers_and_sections():
    text = (f"[    0.1] booting\n{MARK} init 2.88\n{MARK} boot-memtotal-kib 4009396\n{MARK} balloon-loaded 3.15\n"
            f"{MARK} settled 11.41 8\n{MARK} settled-memtotal-kib 863668\n{MARK} begin free\n{FREE}\n{MARK} end free\n"
            f"{MARK} begin meminfo\nMemTotal:  863668 kB\nHugePages_Total:   0\n{MARK} end meminfo\n{MARK} done 11.5\n")
    c = Console.parse(text)
    assert c.number("boot-memtotal-kib") == 4009396 and c.number("settled") == 11.41
    assert parse_free(c.sections["free"]) == {"total": 843, "used": 26, "free": 806, "shared": 2,
                                              "buff_cache": 11, "available": 741}
    assert parse_meminfo(c.sections["meminfo"]) == {"MemTotal": 863668, "HugePages_Total": 0}
    assert c.has("done") and not c.has("settle-timeout")


def test_hostile_console_numbers_are_ignored():
    c = Console.parse(f"{MARK} init inf\n{MARK} settled nan\n{MARK} done 1e400\n{MARK} boot-memtotal-kib 12x\n")
    assert [c.number(k) for k in ("init", "settled", "done", "boot-memtotal-kib")] == [None] * 4


def test_busybox_free_without_available_column():
    text = "             total       used       free     shared    buffers     cached\nMem:          1000        100        900          0         10         20\n"
    assert parse_free(text)["total"] == 1000


def test_console_excerpt_keeps_why_the_guest_died():
    from generator.guests.console import excerpt
    lines = ["[ 1.0] boot"] + ["[ 2.0] Out of memory: Killed process 1 (sh)",
                               "[ 2.1] Kernel panic - not syncing: System is deadlocked on memory"]
    lines += [f"[ 3.0] R{i:02d}: 0000000000000000" for i in range(60)]
    got = excerpt("\n".join(lines), limit=40)
    assert got[:3] == [lines[1], lines[2], "…"] and got[3:] == lines[-40:]
    assert excerpt("\n".join(lines[:5]), limit=40) == lines[:5]


def test_console_excerpt_drops_colour_codes():
    from generator.guests.console import excerpt

    lines = excerpt("[\x1b[0;32m  OK  \x1b[0m] Started \x1b[0;1;39mqemu-guest-agent.service\x1b[0m\nlogin: ")
    assert lines == ["[  OK  ] Started qemu-guest-agent.service", "login: "]
