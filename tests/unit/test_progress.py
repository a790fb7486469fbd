"""Progress lines and the live bar (generator/progress.py), and what guests may not print to the
terminal through them."""
from __future__ import annotations

import io

from generator.progress import Progress, describe
from tests.support.hostile import TERMINAL_ATTACK  # noqa: F401


def rec(status="ok", total=843, memory=4096):
    return {"status": status, "free_m": {"total": total}, "memory_mib": memory, "current_memory_mib": 1024,
            "reason": "cannot set up guest memory", "durations": {"total_s": 18.0}}


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    p = Progress(stream=out, live=False)
    p.start(2, skipped=1)
    p.begin("local/debian/m4096-c1024-r1")
    p.end("local/debian/m4096-c1024-r1", rec())
    p.end("local/debian/m32768-c1024-r1", rec("refused", memory=32768))
    p.finish()
    text = out.getvalue()
    assert "\r" not in text and "\033" not in text
    assert "1 point(s) already measured; 2 to measure" in text
    assert "[1/2] local/debian/m4096-c1024-r1 (memory 4 GiB, currentMemory 1 GiB) ok: free -m total 843 MiB (18 s)" in text
    assert "[2/2] local/debian/m32768-c1024-r1 (memory 32 GiB, currentMemory 1 GiB) refused: cannot set up guest memory" in text
    assert "measured 2 point(s), 1 failed" in text


def test_live_bar_counts_and_eta():
    out = io.StringIO()
    p = Progress(stream=out, live=True)
    p.start(4)
    p.begin("a")
    p.end("a", rec())
    p.begin("b")
    line = p.status_line()
    assert "1 done, 0 failed, 3 left, 1 running" in line and "ETA " in line and "ETA ?" not in line
    assert "\r\033[K[######" in out.getvalue()
    p.end("b", rec("oom"))
    assert "1 done, 1 failed, 2 left" in p.status_line()


def test_describe_failure():
    assert describe(rec("timeout")) == "timeout: cannot set up guest memory"


def test_a_long_point_says_how_far_its_balloon_got_once_a_minute():
    """Without a terminal a 128 GiB point would be silent for many minutes: it says where its balloon is."""
    out = io.StringIO()
    p = Progress(stream=out, live=False)
    p.start(1)
    live = p.begin("local/debian/m131072-c1024-r1")
    since = live["since"]
    gib = 1024 * 1024
    live.update(timeline=[], memory_kib=128 * gib, target_kib=1 * gib)
    p.tick(now=since + 61)                       # nothing sampled yet: nothing to say
    assert "..." not in out.getvalue()
    live["timeline"] += [[t, 128 * gib - int(t * 0.25 * gib), None] for t in range(10, 71)]
    p.tick(now=since + 130)
    line = out.getvalue().splitlines()[-1]
    assert line == "  ... local/debian/m131072-c1024-r1: 2m10s, balloon 17.5 of 127 GiB given back, 0.25 GiB/s"
    p.tick(now=since + 150)                      # within the minute: quiet
    assert out.getvalue().splitlines()[-1] == line
    live["timeline"].append([80.0, 1 * gib, None])   # at its target: nothing worth saying
    p.tick(now=since + 200)
    assert out.getvalue().splitlines()[-1] == line
    p.end("local/debian/m131072-c1024-r1", rec("oom", memory=131072))


def test_the_live_bar_shows_the_oldest_points_balloon():
    p = Progress(stream=io.StringIO(), live=True)
    p.start(2)
    gib = 1024 * 1024
    p.begin("a").update(timeline=[[1.0, 64 * gib, None], [11.0, 62 * gib, None]], memory_kib=64 * gib, target_kib=gib)
    p.begin("b")
    assert p.status_line().endswith("; a: balloon 2.0 of 63 GiB given back, 0.20 GiB/s")
    # a Xen guest or a balloon with nothing to give back says nothing
    p2 = Progress(stream=io.StringIO(), live=True)
    p2.start(1)
    p2.begin("x").update(timeline=[[1.0, gib, None]], memory_kib=gib, target_kib=gib)
    assert "balloon" not in p2.status_line()


def test_the_eta_leaves_out_set_up_before_the_first_point(monkeypatch):
    """A canary boot (or building an image) before any point starts is not part of a point's time."""
    clock = [1000.0]
    monkeypatch.setattr("generator.progress.time.monotonic", lambda: clock[0])
    p = Progress(stream=io.StringIO(), live=False)
    p.start(4)
    clock[0] += 40  # 40 s of set-up: the KVM canary
    for i in range(2):
        p.begin(f"k{i}")
        clock[0] += 10
        p.end(f"k{i}", rec())
    assert p.eta() == "20s"  # two points of 10 s left, not (60 s / 2) x 2


def test_a_single_long_point_has_an_eta_from_its_balloon(monkeypatch):
    """Before any point finishes, the running point's balloon says how far it has got: a 2-minute
    full-system point is not 'ETA ?' all along."""
    clock = [1000.0]
    monkeypatch.setattr("generator.progress.time.monotonic", lambda: clock[0])
    p = Progress(stream=io.StringIO(), live=False)
    p.start(2)
    live = p.begin("only")
    assert p.eta() == "?"  # nothing to go on yet
    gib = 1024 * 1024
    live.update(memory_kib=33 * gib, target_kib=1 * gib, timeline=[[1.0, 33 * gib, None]])
    clock[0] += 30
    live["timeline"].append([30.0, 25 * gib, None])  # a quarter of the way after 30 s
    assert p.eta() == "~3m30s"  # 90 s more for this point, 120 s for the one queued behind it
    p.end("only", rec())
    assert not p.eta().startswith("~")  # from finished points again


def test_the_progress_line_receives_no_control_sequences_from_guests():
    import io

    from generator.progress import Progress

    out = io.StringIO()
    p = Progress(stream=out, live=True)
    p.start(2)
    p.begin("local/g/m1024-c1024-r1")
    p.end("local/g/m1024-c1024-r1", {"status": "oom", "reason": TERMINAL_ATTACK, "memory_mib": 1024,
                                    "current_memory_mib": 1024})
    p.note("guest says \x1b]0;t\x07 hi")
    p.finish()
    text = out.getvalue()
    own = text.replace("\r\033[K", "")  # the bar's own carriage return and erase-line
    assert "\x1b" not in own and "\x07" not in own and "\r" not in own and "\x9b" not in own, repr(own)
    assert "oom: OSC52  title  clear  cr  overwrite" in own and "guest says  hi" in own
