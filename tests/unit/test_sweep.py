"""The sweep (generator/sweep.py) over fake hosts: scheduling in slots, the memory budget, resuming,
signals, a failing host and a failing point, without booting anything."""
from __future__ import annotations

import io
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from generator import results, sweep
from generator.errors import StopRequested, UserError
from generator.kinds import ProbeKind, Staged
from generator.manifest import load
from generator.progress import Progress
from generator.sweep import CanaryBoot, MemoryBudget, Sweep, SweepOptions, choose_domain_type, slots_for
from tests.support.fake_host import SweepHost, probe_domain

TWO_HOSTS = """
  - name: far
    uri: qemu+ssh://root@far.example.org/system
    domain_type: qemu
"""


class CountingProgress(Progress):
    """The sweep's progress, counting the points in flight (between begin and end)."""

    def __init__(self, stream):
        super().__init__(stream=stream, live=False)
        self.in_flight = self.most_in_flight = 0

    def begin(self, key):
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        return super().begin(key)

    def end(self, key, record):
        with self.lock:
            self.in_flight -= 1
        return super().end(key, record)


class StagedProbe:
    """The probe kind, with its files 'staged' without building anything: measuring is the real code."""

    def stage(self, host, guest, **_):
        return Staged(ProbeKind(), {"kernel": "/k", "initrd": "/i", "release": "6.1.0-57-amd64", "boot_method": "pvh"},
                      canary=("/k", "/i", "6.1.0-57-amd64", "pvh"))


@pytest.fixture
def fake(write_manifest, monkeypatch, tmp_path):
    """A sweep of 1, 4 and 16 GiB whose hosts are SweepHosts: `fake.hosts[name]` is set by the test
    (the default: 'local', quick probes), `fake.run(**sweep_options)` runs it and returns the summary."""
    class Fake:
        hosts: dict[str, SweepHost] = {}
        stream = io.StringIO()

        def manifest(self, extra_hosts: str = "", boot: str = "1s", domain_type: str = "qemu"):
            path = write_manifest(memory="[1 GiB, 4 GiB, 16 GiB]", domain_type=domain_type)
            text = path.read_text().replace("  boot: 120s\n", f"  boot: {boot}\n")
            if extra_hosts:
                text = text.replace("    domain_type: qemu\n", "    domain_type: qemu\n" + extra_hosts, 1)
            path.write_text(text)
            return load(path)

        def sweep(self, m=None, **options) -> Sweep:
            self.progress = CountingProgress(self.stream)
            return Sweep(m or self.manifest(), cache_dir=tmp_path / "cache", progress=self.progress,
                         options=SweepOptions(**options))

        def run(self, m=None, **options):
            return self.sweep(m, **options).run()

        def created(self, name="local") -> list[int]:
            return [d.memory_kib // 1024 for d in self.hosts[name].conn.domains]

    f = Fake()
    f.hosts = {"local": SweepHost("local", lambda xml: probe_domain(xml, seconds=0.2))}
    monkeypatch.setattr(sweep, "runtime_for", lambda spec, cache_dir, note=None, stop=None: f.hosts[spec.name])
    monkeypatch.setattr(sweep, "kind_of", lambda guest: StagedProbe())
    return f


def recorded(m) -> dict[int, str]:
    """memory MiB -> status of every record the sweep wrote."""
    out = {}
    for path in sorted(Path(m.path).parent.joinpath("results").rglob("*.json")):
        rec = results.read_record(path)
        out[rec["memory_mib"]] = rec["status"]
    return out


def test_points_run_side_by_side_in_their_slots_largest_memory_first(fake):
    m = fake.manifest()
    summary = fake.run(m, jobs=2)
    assert (summary.measured, summary.failed, summary.host_errors, summary.interrupted) == (3, {}, {}, False)
    assert recorded(m) == {1024: "ok", 4096: "ok", 16384: "ok"}
    created = fake.created()
    assert sorted(created[:2]) == [4096, 16384] and created[2] == 1024  # the longest boots start first
    assert fake.progress.most_in_flight == 2  # two slots, both used
    host = fake.hosts["local"]
    assert all(d.destroyed for d in host.conn.domains) and host.closed  # every guest destroyed by the sweep


def test_one_slot_runs_one_point_at_a_time_largest_first(fake):
    fake.run(jobs=1)
    assert fake.progress.most_in_flight == 1 and fake.created() == [16384, 4096, 1024]
    assert all(d.destroyed for d in fake.hosts["local"].conn.domains)


def test_the_memory_budget_holds_points_back_until_memory_is_free(fake):
    """Three slots, but memory for one point at a time (80% of what the host has free): each guest is
    created only once the one before is destroyed, and all of them run."""
    fake.hosts["local"] = SweepHost("local", lambda xml: probe_domain(xml, seconds=0.2), memory_available_mib=1500)
    summary = fake.run(jobs=3)
    assert summary.measured == 3 and fake.hosts["local"].conn.most_at_once == 1  # never two guests at once


def test_memory_budget_one_point_always_runs_and_a_stopping_sweep_stops_waiting():
    budget = MemoryBudget(1000)
    stop = threading.Event()
    budget.acquire(5000, stop)  # larger than the host: it still runs, alone
    got = []

    def wait(need):
        try:
            budget.acquire(need, stop)
            got.append("ran")
        except StopRequested:
            got.append("stopped")
    waiter = threading.Thread(target=wait, args=(10,))
    waiter.start()
    time.sleep(0.3)
    assert not got  # waits while the big one runs
    budget.release(5000)
    waiter.join(2)
    assert got == ["ran"] and budget.used == 10
    blocked = threading.Thread(target=wait, args=(995,))  # 10 + 995 > 1000: waits for room
    blocked.start()
    time.sleep(0.3)
    assert got == ["ran"]
    stop.set()  # the sweep is stopping: the waiter gives up instead of waiting for room
    blocked.join(2)
    assert got == ["ran", "stopped"] and budget.used == 10 and budget.running == 1


def test_a_second_run_measures_only_what_has_no_record(fake):
    m = fake.manifest()
    first = fake.run(m, only=["*/m4096-*"])
    assert first.measured == 1 and fake.created() == [4096]
    second = fake.run(m)
    assert (second.skipped, second.measured) == (1, 2) and fake.created() == [4096, 16384, 1024]
    third = fake.run(m)
    assert (third.skipped, third.measured) == (3, 0) and len(fake.created()) == 3
    assert "nothing to measure: all 3 point(s) have a record" in fake.stream.getvalue()


def test_a_timeout_is_measured_again_a_death_only_with_retry(fake):
    def make(xml):
        memory = int(sweep_memory(xml))
        return probe_domain(xml, dies=memory == 16384 * 1024, never=memory == 1024 * 1024)
    fake.hosts["local"] = SweepHost("local", make)
    m = fake.manifest()
    summary = fake.run(m, jobs=2)
    assert recorded(m) == {1024: "timeout", 4096: "ok", 16384: "oom"}
    assert sorted(summary.failed.values()) == ["oom", "timeout"]
    fake.hosts["local"] = SweepHost("local", lambda xml: probe_domain(xml))
    again = fake.run(m)
    assert fake.created() == [1024]  # the timeout, not the death: a death is a result
    assert recorded(m) == {1024: "ok", 4096: "ok", 16384: "oom"} and again.skipped == 2
    fake.run(m, retry=True)
    assert fake.created() == [1024, 16384]


def test_a_forced_remeasure_that_times_out_keeps_the_recorded_outcome(fake):
    def make(xml):
        return probe_domain(xml, dies=int(sweep_memory(xml)) == 16384 * 1024)
    fake.hosts["local"] = SweepHost("local", make)
    m = fake.manifest()
    fake.run(m)
    assert recorded(m) == {1024: "ok", 4096: "ok", 16384: "oom"}
    fake.hosts["local"] = SweepHost("local", lambda xml: probe_domain(xml, never=True))
    again = fake.run(m, force=True)
    assert again.measured == 3 and sorted(again.failed.values()) == ["timeout"] * 3
    assert recorded(m) == {1024: "ok", 4096: "ok", 16384: "oom"}  # nothing measured is lost
    assert "its recorded outcome (oom) is kept" in fake.stream.getvalue()


def sweep_memory(xml: str) -> str:
    return xml.split("<memory unit=\"KiB\">")[1].split("<")[0]


def test_sigterm_keeps_finished_points_and_destroys_the_running_ones(fake, capsys):
    """The 16 GiB guest never reports; the others finish. SIGTERM (as systemd or kill sends it) once
    they are recorded: the sweep stops, the running guest is destroyed, nothing finished is lost and
    the signal handlers are put back."""
    def make(xml):
        return probe_domain(xml, never=sweep_memory(xml) == str(16384 * 1024))
    fake.hosts["local"] = SweepHost("local", make)
    m = fake.manifest(boot="60s")
    before = signal.getsignal(signal.SIGTERM)
    done = threading.Event()

    def kill_when_two_are_recorded():
        """SIGTERM once two points are recorded, and only while the sweep's own handler is installed
        (never into pytest after the sweep returned)."""
        deadline = time.monotonic() + 20
        while not done.is_set() and time.monotonic() < deadline:
            if len(recorded(m)) >= 2 and signal.getsignal(signal.SIGTERM) is not before:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)
    killer = threading.Thread(target=kill_when_two_are_recorded, daemon=True)
    killer.start()
    t0 = time.monotonic()
    try:
        summary = fake.run(m, jobs=3)
    finally:
        done.set()
        killer.join(5)
    assert time.monotonic() - t0 < 15  # not the 60 s boot timeout
    assert summary.interrupted and summary.measured == 2
    assert recorded(m) == {1024: "ok", 4096: "ok"}  # the interrupted point has no record: measured next time
    domains = fake.hosts["local"].conn.domains
    assert all(d.destroyed for d in domains) and len(domains) == 3
    assert signal.getsignal(signal.SIGTERM) is before
    assert "SIGTERM: stopping; running guests are destroyed, finished points are kept" in capsys.readouterr().err


def test_a_host_that_fails_is_one_line_and_the_others_go_on(fake):
    fake.hosts["far"] = SweepHost("far", probe_domain, fails=UserError("host far: cannot connect: ssh: connection refused"))
    m = fake.manifest(extra_hosts=TWO_HOSTS)
    summary = fake.run(m)
    assert summary.host_errors == {"far": "host far: cannot connect: ssh: connection refused"}
    assert summary.measured == 3 and sorted(fake.created()) == [1024, 4096, 16384]


def test_a_tool_error_on_one_point_is_recorded_and_the_sweep_goes_on(fake):
    def make(xml):
        if sweep_memory(xml) == str(4096 * 1024):
            raise RuntimeError("the fake broke")
        return probe_domain(xml)
    fake.hosts["local"] = SweepHost("local", make)
    m = fake.manifest()
    summary = fake.run(m)
    assert recorded(m) == {1024: "ok", 4096: "error", 16384: "ok"}
    assert list(summary.failed.values()) == ["error"]
    rec = next(results.read_record(p) for p in Path(m.path).parent.joinpath("results").rglob("*4096MiB*.json"))
    assert rec["reason"] == "RuntimeError: the fake broke"


def test_leftovers_of_a_killed_run_are_removed_and_named(fake):
    fake.hosts["local"] = SweepHost("local", probe_domain, leftovers=("mb-1a2b3c-local-debian-m1024",))
    fake.run()
    assert "removed 1 leftover domain(s) of an earlier run: mb-1a2b3c-local-debian-m1024" in fake.stream.getvalue()


def test_auto_picks_tcg_without_kvm_and_kvm_when_its_canary_answers(fake, tmp_path):
    spec = fake.manifest(domain_type="auto").host("local")
    no_kvm = SweepHost("local", probe_domain)
    no_kvm.spec = spec
    facts = no_kvm.facts()
    dtype, why = choose_domain_type(no_kvm, facts, CanaryBoot("/k", "/i", "6.1.0-57-amd64-pvh", 5, "t"), tmp_path / "c")
    assert dtype == "qemu" and "KVM not offered by the host (KVM is not available)" in why
    kvm = SweepHost("local", probe_domain, kvm=True)
    kvm.spec = spec
    notes = []
    dtype, why = choose_domain_type(kvm, facts, CanaryBoot("/k", "/i", "6.1.0-57-amd64-pvh", 5, "t"), tmp_path / "c", note=notes.append)
    assert dtype == "kvm" and why.startswith("KVM canary boot answered in") and len(kvm.conn.domains) == 1
    canary = kvm.conn.domains[0]
    assert '<domain type="kvm">' in canary.xml and canary.memory_kib == 256 * 1024  # a small KVM guest
    assert "checking whether KVM works" in notes[0]
    dtype, why = choose_domain_type(kvm, facts, CanaryBoot("/k", "/i", "6.1.0-57-amd64-pvh", 5, "t"), tmp_path / "c")
    assert dtype == "kvm" and why.endswith("(cached canary result)") and len(kvm.conn.domains) == 1  # no new boot


def test_a_kvm_that_runs_nothing_is_found_out_in_seconds_not_at_the_timeout(fake, tmp_path, monkeypatch):
    """Like /dev/kvm here (a PVM module): the domain starts, its guest never prints a line."""
    import time

    from generator import canary
    from tests.support.fake_host import ScriptedDomain

    monkeypatch.setattr(canary, "CANARY_SILENT_S", 0.5)
    spec = fake.manifest(domain_type="auto").host("local")
    silent = SweepHost("local", lambda xml: ScriptedDomain(xml, [(99.0, "never")], 256 * 1024, 256 * 1024,
                                                           ends=False), kvm=True)
    silent.spec = spec
    started = time.monotonic()
    dtype, why = choose_domain_type(silent, silent.facts(), CanaryBoot("/k", "/i", "6.1.0-57-amd64-pvh", 30, "t"), tmp_path / "c")
    assert dtype == "qemu" and "printed nothing in 0.5 s" in why and time.monotonic() - started < 5
    assert not any(d.isActive() for d in silent.conn.domains)  # the canary is gone


# --- slots and memory -------------------------------------------------------------------------------
def test_local_slots_leave_the_nested_hosts_cores():
    spec = type("S", (), {"slots": 0})()
    assert slots_for(spec, {"cores": 2}, 1, None) == 2
    assert slots_for(spec, {"cores": 2}, 1, None, cores_taken=1) == 1
    assert slots_for(spec, {"cores": 2}, 1, None, cores_taken=4) == 1  # always one


def test_the_kvm_answer_is_kept_per_machine_not_per_clone(monkeypatch, tmp_path):
    """Two clones of the project on one machine share the canary's answer (MEMBALLOON_MACHINE_CACHE, else
    $XDG_CACHE_HOME/memballoon, else ~/.cache/memballoon), keyed without the manifest's host name."""
    from generator.sweep import _canary_cache, machine_cache_dir

    monkeypatch.delenv("MEMBALLOON_MACHINE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert machine_cache_dir() == (tmp_path / "xdg" / "memballoon").resolve()
    monkeypatch.setenv("MEMBALLOON_MACHINE_CACHE", str(tmp_path / "m"))
    assert machine_cache_dir() == (tmp_path / "m").resolve()
    facts = {"name": "local", "hostname": "h1", "hypervisor": "QEMU 7.2.22", "kernel": "6.1.0-57-amd64"}
    assert _canary_cache(tmp_path, facts, "r") == _canary_cache(tmp_path, dict(facts, name="here"), "r")
    assert _canary_cache(tmp_path, facts, "r") != _canary_cache(tmp_path, dict(facts, hostname="h2"), "r")
