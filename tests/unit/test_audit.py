"""audit's logic (generator/audit.py) with a fake libvirt (tests/support/fake_libvirt.py) and the
committed records' model (generator/model.py): rows, warnings, read-only connections, hostile names."""
from __future__ import annotations

import json
import re

import pytest

from generator import audit as au
from generator.model import build_model, committed_records
from tests.support import ROOT  # noqa: F401
from tests.support.audit import host, model  # noqa: F401
from tests.support.fake_libvirt import GIB, FakeConn, FakeDomain


def row(model, dom, **opts):
    [h] = au.audit([host([dom])[0]], model, au.Options(**opts))
    assert not h.error, h.error
    return h.guests[0] if h.guests else None


def test_the_model_is_the_committed_records(model):
    q = {c.kernel: c for c in model.curves if c.family == "qemu"}
    assert set(q) >= {"5.10.0-32-amd64", "6.1.0-57-amd64", "6.12.117+deb13-amd64"}
    assert round(q["6.1.0-57-amd64"].per_gib(), 1) == 17.5  # the posts' one cost per GiB, from the rules
    x = {c.kernel: c for c in model.curves if c.family == "xen"}
    assert x["6.1.0-56-amd64"].lost(131072)[0] == x["6.1.0-56-amd64"].lost(32768)[0]  # Xen's loss stops
    b = model.bounds["qemu"]
    assert b.died_max < b.survived_min and b.died_n > 0 and b.survived_n > 0


def test_a_guest_at_16_gib_loses_what_the_curve_says(model):
    g = row(model, FakeDomain("web", 16 * GIB, 1 * GIB, 633 * 1024, kernel="6.1.0-57-amd64"))
    assert (g.memory_mib, g.current_memory_mib, g.sees_mib, g.lost_mib) == (16384, 1024, 633, 391)
    curve = next(c for c in model.curves if c.kernel == "6.1.0-57-amd64" and c.family == "qemu")
    assert g.ceiling_mib == round(curve.lost(16384)[0] - curve.lost(1024)[0], 1)
    assert g.give_back_mib == g.ceiling_mib and g.lower_to_mib == 1024
    assert g.basis == "measured for kernel 6.1.0-57-amd64" and g.sees_from == "balloon statistics"
    assert not g.warning


def test_lower_to_and_an_unknown_kernel_is_an_estimate(model):
    g = row(model, FakeDomain("db", 32 * GIB, 2 * GIB, 1400 * 1024), lower_to_mib=8192)
    curve, _ = model.curve("qemu", "")
    assert g.give_back_mib == round(curve.lost(32768)[0] - curve.lost(8192)[0], 1)
    assert g.basis.startswith("estimate: guest kernel unknown; the median of")
    assert any("estimate" in line for line in au.table([au.HostAudit("h", "u", guests=[g])]))


def test_a_ceiling_that_kills_at_the_next_boot_is_a_warning(model):
    g = row(model, FakeDomain("tiny", 64 * GIB, 1 * GIB, None, kernel="6.1.0-56-amd64"))
    assert g.warning.startswith("a boot at this ceiling leaves about") and "died" in g.warning
    ok = row(model, FakeDomain("fine", 2 * GIB, 1 * GIB, 900 * 1024, kernel="6.1.0-56-amd64"))
    assert not ok.warning


@pytest.mark.parametrize("kwargs, why", [
    ({"period": None}, "no balloon statistics period (its figures date from its boot): --enable-stats SECONDS"),
    ({"balloon": False}, "no balloon device"),
    ({"dtype": "xen", "period": None}, "libvirt's libxl driver gives no guest-side statistics"),
])
def test_unknown_is_said_with_its_reason(model, kwargs, why):
    g = row(model, FakeDomain("x", 4 * GIB, 1 * GIB, 800 * 1024, **kwargs))
    assert g.sees_mib is None and g.lost_mib is None and g.unknown_why.startswith(why)


def test_stale_statistics_are_not_read_as_now(model):
    dom = FakeDomain("stuck", 4 * GIB, 1 * GIB, 843 * 1024)
    dom.memoryStats = lambda: {"actual": GIB, "available": 4 * GIB, "last_update": int(__import__("time").time()) - 600}
    g = row(model, dom)
    assert g.sees_mib is None and re.match(r"the balloon statistics were last updated 60[01] s ago", g.unknown_why)


def test_read_only_unless_asked(model):
    dom = FakeDomain("nostats", 4 * GIB, 1 * GIB, 843 * 1024, period=None)
    opened = []
    conn = FakeConn([dom])
    target = au.Target("h", "qemu:///system", lambda ro: opened.append(ro) or conn)
    au.audit([target], model, au.Options())
    assert opened == [True] and dom.changes == [] and conn.closed
    waited = []
    [h] = au.audit([target], model, au.Options(enable_stats=2, wait=waited.append))
    assert opened[-1] is False and dom.changes == [("setMemoryStatsPeriod", 2, 1)] and waited == [5]
    assert h.guests[0].sees_mib == 843 and "statistics period set to 2 s (live only)" in h.guests[0].changed


def test_hostile_names_titles_and_a_vanishing_domain(model):
    evil = "\x1b]0;pwned\x07\x1b[2Jweb|*[x](javascript:y)*<script>{{< shortcode >}}" + "A" * 500
    doms = [FakeDomain(evil, 4 * GIB, 1 * GIB, 843 * 1024, title="<script>red</script>\u202e"),
            FakeDomain("gone", 4 * GIB, 1 * GIB, 843 * 1024, vanish=True),
            FakeDomain("ok", 2 * GIB, 1 * GIB, 940 * 1024)]
    [h] = au.audit([host(doms)[0]], model, au.Options())
    assert [g.name for g in h.guests][-1] == "ok" and len(h.guests) == 2  # the vanished one is not a row
    text = "\n".join(au.table([h]))
    assert "\x1b" not in text and "\x07" not in text
    assert all(len(g.name) <= au.MAX_TEXT for g in h.guests)
    assert h.guests[0].title == "<script>red</script>"  # bidi override dropped; escaped where it is written
    doc = json.loads(au.as_json([h], model))
    assert doc["format"] == "memballoon-audit" and doc["version"] == 1
    assert all("\x1b" not in g["name"] for g in doc["hosts"][0]["guests"])


def test_a_failing_host_is_its_line_and_the_others_go_on(model):
    def broken(read_only):
        import libvirt
        raise libvirt.libvirtError("Failed to connect socket: Connection refused")
    good, _ = host([FakeDomain("a", 4 * GIB, 1 * GIB, 843 * 1024)], "good")
    hosts = au.audit([au.Target("bad", "qemu+ssh://root@bad/system", broken), good], model, au.Options())
    assert [h.name for h in hosts] == ["bad", "good"] and hosts[0].error.startswith("libvirt: ")
    assert au.failed(hosts) and len(hosts[1].guests) == 1
    assert "failed: libvirt: " in "\n".join(au.table(hosts))


def test_500_domains_sorted_by_what_they_give_back(model):
    doms = [FakeDomain(f"g{i:03d}", (1 + i % 32) * GIB, 1 * GIB, 800 * 1024) for i in range(500)]
    [h] = au.audit([host(doms)[0]], model, au.Options())
    assert len(h.guests) == 500
    backs = [g.give_back_mib for g in h.guests]
    assert backs == sorted(backs, reverse=True) and backs[0] > backs[-1] == 0
    assert h.totals["guests"] == 500 and h.totals["give_back_mib"] == round(sum(backs), 1)


def test_model_from_records_of_a_single_point():
    recs = [r for r in committed_records(ROOT / "experiments") if r["memory_mib"] == 4096]
    c = build_model(recs).curves[0]
    # itemized: the kernel's rules, fitted to one size, answer for 64 GiB as its boots there measured
    lost, how = c.lost(65536)
    booted = [r for r in committed_records(ROOT / "experiments") if r["memory_mib"] == 65536
              and r["guest_kernel"] == c.kernel and r.get("memtotal_boot_kib") and r["domain_type"] == "qemu"]
    assert booted and len(c.points) == 1 and how == "from the kernel's rules"
    assert abs(lost - (65536 - booted[0]["memtotal_boot_kib"] / 1024)) < 1
    # not itemized: the one point, extended flat, and said so
    c = build_model([dict(r, set_aside_kib=None) for r in recs]).curves[0]
    assert len(c.points) == 1 and c.lost(65536)[1].startswith("extrapolated (flat)")


def test_a_domain_that_answers_nonsense_is_its_own_row(model):
    odd = FakeDomain("odd", 4 * GIB, 1 * GIB, 843 * 1024)
    odd.memoryStats = lambda: ["not", "a", "dict"]
    [h] = au.audit([host([odd, FakeDomain("fine", 2 * GIB, 1 * GIB, 940 * 1024)])[0]], model, au.Options())
    assert not h.error and {g.name for g in h.guests} == {"odd", "fine"}
    assert next(g for g in h.guests if g.name == "odd").unknown_why.startswith("not read: AttributeError")


def test_lower_to_below_current_memory_is_current_memory(model):
    g = row(model, FakeDomain("db", 8 * GIB, 2 * GIB, 1800 * 1024), lower_to_mib=512)
    assert g.lower_to_mib == 2048  # libvirt refuses a ceiling below the target


def test_a_guest_stopped_after_the_list_is_not_a_row_and_not_counted(model):
    import libvirt

    doms = [FakeDomain("stopped", 64 * GIB, 1 * GIB, 300 * 1024, state=libvirt.VIR_DOMAIN_SHUTOFF),
            FakeDomain("ok", 2 * GIB, 1 * GIB, 940 * 1024)]
    [h] = au.audit([host(doms)[0]], model, au.Options())
    assert [g.name for g in h.guests] == ["ok"] and h.totals["guests"] == 1


def test_figures_no_guest_can_have_are_not_read(model):
    """A guest reporting 2**64-1 KiB available, and libvirt answering a balloon above memory: no
    figure from them reaches the table, the JSON or the totals."""
    huge = FakeDomain("huge", 4 * GIB, 1 * GIB, 2**64 - 1)
    odd = FakeDomain("odd", 4 * GIB, 1 * GIB, 843 * 1024)
    odd.info = lambda: [1, 4 * GIB, 2**63, 1, 0]
    [h] = au.audit([host([huge, odd, FakeDomain("ok", 2 * GIB, 1 * GIB, 940 * 1024)])[0]], model, au.Options())
    rows = {g.name: g for g in h.guests}
    assert rows["huge"].sees_mib is None and "not between 0 and its memory" in rows["huge"].unknown_why
    assert rows["odd"].sees_mib is None and "not figures of a guest" in rows["odd"].unknown_why
    text = "\n".join(au.table([h]))
    assert "18,014,398" not in text and "-" + "1" not in text.replace(" -", "")
    totals = h.totals
    assert all(v is None or v >= 0 for v in totals.values() if isinstance(v, (int, float))), totals


def test_ctrl_c_ends_an_audit_at_once_while_a_host_stalls(model):
    """A host stuck in its connection (an SSH timeout away) does not hold back an interrupted audit."""
    import _thread
    import threading
    import time

    def stalls(read_only):
        time.sleep(30)
    started = time.monotonic()
    threading.Timer(0.5, _thread.interrupt_main).start()
    with pytest.raises(KeyboardInterrupt):
        au.audit([au.Target("stuck", "qemu+ssh://root@stuck/system", stalls)], model, au.Options())
    assert time.monotonic() - started < 3


def test_prometheus_output_parses_and_escapes_hostile_names(model):
    from prometheus_client.parser import text_string_to_metric_families

    evil = 'we"b\\x\nnext{a="b"} 1'
    doms = [FakeDomain(evil, 16 * GIB, 1 * GIB, 800 * 1024), FakeDomain("quiet", 2 * GIB, 1 * GIB, None)]
    def broken(read_only):
        import libvirt
        raise libvirt.libvirtError("Failed to connect socket")
    hosts = au.audit([host(doms, "kvm1")[0], au.Target("down", "qemu+ssh://root@down/system", broken)], model,
                     au.Options())
    text = au.as_prometheus(hosts)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    up = {s.labels["host"]: s.value for s in families["memballoon_audit_host_up"].samples}
    assert up == {"kvm1": 1, "down": 0}
    sees = {s.labels["domain"]: s.value for s in families["memballoon_guest_sees_bytes"].samples}
    assert list(sees.values()) == [800 * 1024 * 1024]
    name = next(iter(sees))
    assert name == next(g.name for g in hosts[0].guests if g.sees_mib)  # the name, exactly, after escaping
    ceiling = {s.labels["domain"]: s.value for s in families["memballoon_guest_memory_bytes"].samples}
    assert ceiling[name] == 16 * GIB * 1024 and ceiling["quiet"] == 2 * GIB * 1024
    assert "quiet" not in sees  # unknown is left out, not written as 0
    lost = families["memballoon_guest_lost_to_ceiling_bytes"].samples
    assert lost and all(s.value > 0 for s in lost)


def test_no_daemon_says_how_to_start_one():
    from generator.errors import daemon_hint

    gone = "Failed to connect socket to '/var/run/libvirt/libvirt-sock-ro': No such file or directory"
    assert "systemctl start libvirtd" in daemon_hint("qemu:///system", gone)
    assert "uri: embedded" in daemon_hint("qemu:///session", gone, measuring=True)
    assert "embedded" not in daemon_hint("qemu:///session", gone)
    assert "on that host" in daemon_hint("qemu+ssh://root@kvm1/system", gone)
    assert daemon_hint("qemu:///system", "authentication failed") == ""


def test_a_domain_type_no_hypervisor_claims_gets_no_qemu_curve_or_hint(model):
    lxc = FakeDomain("ct1", 8 * GIB, 1 * GIB, None, dtype="lxc")
    g = row(model, lxc)
    assert g.ceiling_mib is None and g.give_back_mib is None and "no measurements for lxc domains" in g.basis
    assert "virtio_balloon" not in g.unknown_why and "lxc" in g.unknown_why
    kvm = row(model, FakeDomain("vm", 8 * GIB, 1 * GIB, 900 * 1024))
    assert kvm.ceiling_mib and kvm.ceiling_mib > 0  # the same guest under KVM has its curve
