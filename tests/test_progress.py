import io

from generator.progress import Progress, describe


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
