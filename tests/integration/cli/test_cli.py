"""The real CLI in a child process: one-line errors and exit codes, Ctrl-C at any moment, terminals,
status and validate."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from generator import results
from generator.errors import ManifestError
from generator.manifest import load
from generator.publish.build import build_all
from tests.support import ROOT, cli, git, one_line_error  # noqa: F401
from tests.support.disk import fill, small_tmpfs  # noqa: F401
from tests.support.hostile import TERMINAL_ATTACK  # noqa: F401
from tests.support.manifests import BASE, NARROW, with_guest, write  # noqa: F401
from tests.support.sample import hugo, new_site, record, sample, sample_without_content  # noqa: F401


def predict_cli(*args):
    return cli("predict", *args, timeout=60)


def _through_a_terminal(argv, cwd) -> bytes:
    """Run the real CLI with a pseudo-terminal as its stdout and stderr (raw: the terminal adds no CR of
    its own) and return every byte the terminal received."""
    import pty
    import select
    import tty

    master, slave = pty.openpty()
    tty.setraw(slave)
    proc = subprocess.Popen([sys.executable, "-m", "generator", *argv], cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other end is closed
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=30)
    os.close(master)
    assert proc.returncode == 0, out
    return out


def _ok_record_bytes(**change) -> bytes:
    base = record("precise", 1024, 1)
    base.update(change)
    return results.dumps(dict(base, schema_version=results.SCHEMA_VERSION)).encode()


def test_cli_refuses_bad_uris_and_embedded_in_one_line(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "generator", "audit", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
    out = run("qemu+ext:///system?command=/bin/sh")
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and out.stderr.startswith("error: qemu+ext:///system")
    out = run()
    assert out.returncode == 1 and "name a libvirt URI" in out.stderr
    out = run("--lower-to", "12 parsecs", "qemu:///system")
    assert out.returncode == 1 and "--lower-to" in out.stderr


def test_noop_rebuild_writes_nothing_and_skips_matplotlib(sample, tmp_path):
    m = sample()
    site = new_site(tmp_path)
    build_all([m], site=site, quiet=True)
    stamps = {p: p.stat().st_mtime_ns for p in site.rglob("*") if p.is_file()}
    script = ("import sys; from generator.manifest import load; from generator.publish.build import build_all; "
              f"r = build_all([load({m.path!r})], site=__import__('pathlib').Path({str(site)!r}), quiet=True); "
              "print(len(r.written), len(r.skipped), 'matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "6", "False"]  # page, 3 graphs, preview, claims: all skipped
    assert {p: p.stat().st_mtime_ns for p in site.rglob("*") if p.is_file()} == stamps


def test_cli_build_template_error_is_one_line(sample, tmp_path):
    content = tmp_path / "sample" / "broken.md"
    content.parent.mkdir(exist_ok=True)
    content.write_text("ok\n{{ nope }}\n")
    m = sample(content=str(content))
    site = new_site(tmp_path)
    out = subprocess.run([sys.executable, "-m", "generator", "build", m.path, "--site", str(site)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert "broken.md:2: template error" in out.stderr


def test_a_guests_sweep_outside_the_manifests_is_one_line(write_manifest, tmp_path):
    with pytest.raises(ManifestError) as e:
        load(write_manifest(text=NARROW.format(big="[4 GiB, 16 GiB]")))
    assert e.value.problems == ["guests[1].sweep.memory: memory 16384 MiB not in sweep.memory (memory 1024 MiB, "
                                "memory 2048 MiB, memory 4096 MiB); a guest's values narrow the manifest's sweep: "
                                "add them there too"]
    with pytest.raises(ManifestError) as e:
        load(write_manifest(text=NARROW.format(big="[4 GiB]").replace("sweep: {memory", "sweep: {memroy", 1)))
    assert e.value.problems == ["guests[1].sweep.memroy: not a factor; did you mean 'memory'?"]


def test_status_lists_only_a_guests_own_points(write_manifest):
    path = write_manifest(text=NARROW.format(big="[4 GiB]"))
    out = cli("status", str(path))
    assert out.returncode == 0, out.stderr
    assert "big/m4096" in out.stdout and "big/m1024" not in out.stdout and "big/m2048" not in out.stdout
    assert "small/m1024" in out.stdout


def test_a_misspelt_debian_suite_is_caught_by_validate(write_manifest, tmp_path):
    text = NARROW.format(big="[4 GiB]").replace("  - name: small\n", "  - name: small\n    kernel: debian:bookwrom\n")
    path = write_manifest(text=text)
    out = cli("validate", str(path), env={"MEMBALLOON_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"error: {path}: guests[0].kernel: the Debian mirror http://deb.debian.org/debian has no suite 'bookwrom' "
        "(no dists/bookwrom/Release); did you mean 'debian:bookworm'?"]
    good = write_manifest(name="good", text=text.replace("bookwrom", "bookworm"))
    out = cli("validate", str(good), env={"MEMBALLOON_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr
    assert list((tmp_path / "cache" / "suites").glob("*/bookworm"))  # asked once, then remembered


def test_an_unreachable_mirror_is_not_a_guess(write_manifest, tmp_path):
    """No answer from the mirror is not a problem of the manifest: validate passes, and a sweep would
    show apt's own error."""
    text = NARROW.format(big="[4 GiB]").replace("  - name: small\n", "  - name: small\n    kernel: debian:bookwrom\n")
    out = cli("validate", str(write_manifest(text=text)),
              env={"MEMBALLOON_CACHE": str(tmp_path / "cache"), "MEMBALLOON_DEBIAN_MIRROR": "http://127.0.0.1:9/debian"})
    assert out.returncode == 0, out.stderr


def test_a_build_without_data_warns_and_writes_a_draft(tmp_path):
    path = sample_without_content(tmp_path, with_records=False)
    site = new_site(tmp_path)
    out = cli("build", str(path), "--site", str(site), env={"MEMBALLOON_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr
    warning = [ln for ln in out.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warning) == 1 and "no measured point" in warning[0] and "draft" in warning[0], out.stderr
    front = (site / "content/posts/mine/index.md").read_text().split("+++")[1]
    assert "draft = true" in front
    public = hugo(site)
    assert not (public / "posts" / "mine").exists()  # Hugo does not publish it


def test_a_folder_that_is_not_a_hugo_site_is_one_line(tmp_path):
    path = sample_without_content(tmp_path)
    (tmp_path / "nosite").mkdir()
    out = cli("build", str(path), "--site", str(tmp_path / "nosite"))
    assert out.returncode == 1 and out.stderr.strip().count("\n") == 0
    assert "not a Hugo site (no hugo.toml or config.toml)" in out.stderr


def test_cli_on_the_committed_records():
    out = predict_cli("--guest", "debian", "--memory", "48GiB", "--current-memory", "1GiB", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["format"] == "memballoon-predict" and doc["version"] == 1
    assert doc["how"] == "from the kernel's rules (not measured at this size)" and 32768 < doc["memory_mib"] < 65536
    assert 0 < doc["sees_mib"] < 1024
    for bad, line in ((["--memory", "48 GB"], "--memory '48 GB': "), (["--memory", "1000KiB"], "whole number of MiB"),
                      (["--guest", "nobody"], "guests measured: ")):
        args = ["--guest", "debian", "--memory", "4GiB", "--current-memory", "1GiB"]
        i = args.index(bad[0])
        args[i + 1] = bad[1]
        out = predict_cli(*args)
        assert out.returncode == 1 and out.stderr.count("\n") == 1 and line in out.stderr, out.stderr


def test_cli_errors_are_one_line(tmp_path):
    path = write(tmp_path, BASE.replace("experiment: x\n", "experiment: x\nexperiment: y\n"))
    line = one_line_error(cli("validate", str(path)))
    assert "duplicate key 'experiment'" in line
    line = one_line_error(cli("status", str(path)))
    assert "duplicate key 'experiment'" in line
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    line = one_line_error(cli("status", str(fifo), timeout=20))
    assert "not a regular file" in line


def test_sweep_refuses_an_unwritable_results_folder_before_booting(tmp_path, small_tmpfs):
    path = write(tmp_path, BASE)
    fill(small_tmpfs)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "generator", "sweep", str(path), "--results", str(small_tmpfs)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, MEMBALLOON_CACHE=str(tmp_path / "cache")))
    line = one_line_error(out)
    assert f"{small_tmpfs}/x: results cannot be written there (No space left on device)" in line
    assert time.monotonic() - t0 < 15 and not (tmp_path / "cache" / "probe").exists()  # nothing was built or booted


def test_status_on_a_terminal_receives_no_control_sequences_from_records(sample, tmp_path):
    m = sample()
    for path in Path(m.results).rglob("*.json"):
        rec = results.read_record(path)
        rec["reason"] = TERMINAL_ATTACK
        if rec["status"] == "ok":
            rec.update(reading="agent\x1b]0;x\x07", oom_kills=["ev\x1b[2Jil", "\x1b]52;c;eA==\x07name"],
                       cross_check={"agree": False, "agent_memtotal_kib": 1, "balloon_available_kib": 2})
        results.write_record(path, rec)
    out = _through_a_terminal(["status", "-v", m.path], cwd=tmp_path)
    assert b"\x1b" not in out and b"\x07" not in out and b"\r" not in out and b"\xc2\x9b" not in out, out
    text = out.decode()
    assert "refused: OSC52  title  clear  cr  overwrite bel  c1  st  reset  end" in text  # the words stay
    assert "OOM killer killed evil, name" in text and "read via agent;" in text
    assert "16 done, 4 failed, 0 missing" in text


@pytest.mark.parametrize("raw, field", [
    (_ok_record_bytes(free_m={"total": 1.5e308}), "'free_m.total' is too large"),
    (_ok_record_bytes().replace(b'"total": 961', b'"total": 1' + b"0" * 400), "'free_m.total' is too large"),
    (_ok_record_bytes().replace(b'"total": 961', b'"total": ' + b"9" * 4000), "'free_m.total' is too large"),
    (_ok_record_bytes().replace(b'"total": 961', b'"total": 1e400'), "'free_m.total' is too large"),
    (_ok_record_bytes(free_m={"total": -5}), "free_m.total is -5, below 0"),
    (_ok_record_bytes(free_m=None), "an ok record without 'free_m.total'"),
    (_ok_record_bytes(memtotal_settled_kib=None), "an ok record without 'memtotal_settled_kib'"),
    (_ok_record_bytes(memtotal_settled_kib=64 * 1024 * 1024), "'memtotal_settled_kib' is 67108864 KiB, more than memory"),
    (_ok_record_bytes(free_m={"total": 5000}), "free_m.total is 5000 MiB, more than MemTotal"),
    (_ok_record_bytes(host_memory_mib=-1), "'host_memory_mib' is -1, below 0"),
    (_ok_record_bytes(started_at="9999-01-01T00:00:00+00:00"), "'started_at' '9999-01-01T00:00:00+00:00' is in the future"),
    (_ok_record_bytes(started_at="yesterday"), "'started_at' 'yesterday' is not an ISO 8601 time"),
    (_ok_record_bytes(started_at="2026-02-30T10:00:00+00:00"), "is not an ISO 8601 time"),
    (_ok_record_bytes(started_at="2026-11-10T09:00:00"), "is not an ISO 8601 time with its offset"),
    (_ok_record_bytes(durations={"total_s": 1e300}), "'durations.total_s' is too large"),
    (_ok_record_bytes(balloon_timeline=[[1.0, 2 ** 60, None]]), "'balloon_timeline[0][1]' is too large"),
])
def test_absurd_numbers_and_dates_in_records_are_one_line_naming_file_and_field(sample, tmp_path, raw, field):
    m = sample()
    target = Path(m.results) / "kvm1" / "precise" / "memory-1024MiB-current-1024MiB-r1.json"
    target.write_bytes(raw)
    for argv in (["status", m.path], ["build", m.path, "--site", str(new_site(tmp_path))]):
        line = one_line_error(cli(*argv, cwd=tmp_path))
        assert str(target) in line and field in line, line


def test_a_results_folder_that_is_a_git_directory_runs_nothing(tmp_path):
    project = tmp_path / "project"
    folder = project / "experiments" / "x"
    folder.mkdir(parents=True)
    (folder / "experiment.yaml").write_text(BASE)
    (folder / "p.md").write_text("x\n")
    marker = tmp_path / "pwned"
    trap = folder / "results"  # a git directory's files, which git would discover and obey
    (trap / "objects").mkdir(parents=True)
    (trap / "refs").mkdir()
    (trap / "objects" / "keep").write_text("")
    (trap / "refs" / "keep").write_text("")
    (trap / "HEAD").write_text("ref: refs/heads/main\n")
    (trap / "config").write_text(f"[core]\n\trepositoryformatversion = 0\n\tbare = false\n\tworktree = .\n"
                                 f"\tfsmonitor = touch {marker}; false\n")
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "project with a trap")
    head = git(project, "rev-parse", "HEAD").strip()
    # the trap is armed: git discovering such a folder on its own runs the command
    armed_copy = tmp_path / "armed"
    shutil.copytree(trap, armed_copy)
    git(armed_copy, "status", check=False)
    armed = marker.exists()
    marker.unlink(missing_ok=True)
    site = tmp_path / "site"
    (site / "content").mkdir(parents=True)
    (site / "hugo.toml").write_text("")
    out = cli("build", str(folder / "experiment.yaml"), "--site", str(site), cwd=project)
    assert out.returncode == 0, out.stderr
    assert not marker.exists(), "the build ran a command from the results folder's git config"
    assert (site / "content" / "posts" / "x" / "index.md").is_file()
    from generator.publish.post import results_commit
    assert results_commit(trap, project) == head  # the project's own commit, without entering the folder
    assert armed, "this git did not obey the planted config: the trap was not armed, so the test proved nothing"


def test_ctrl_c_at_any_moment_gives_no_traceback(tmp_path):
    """SIGINT while Python imports the tool, while it reads and while it builds (graph workers
    starting or drawing): exit 130 (or 0 if it had finished), never a traceback."""
    codes = []
    for delay in (0.3, 0.5, 0.8, 1.2, 1.8):  # once Python itself is up and importing the tool
        site = tmp_path / f"site{delay}"
        (site / "content").mkdir(parents=True)
        (site / "hugo.toml").write_text("")
        p = subprocess.Popen([sys.executable, "-m", "generator", "build", "--clean", "--site", str(site)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
        assert "Traceback" not in err, (delay, err)
        assert p.returncode in (0, 130), (delay, p.returncode, err)
        codes.append(p.returncode)
    assert 130 in codes


def test_publishing_needs_none_of_the_files_a_sweep_boots(tmp_path):
    """A post rebuilds from records on a machine without the manifest's kernels or images; validate
    and sweep still check them."""
    path = with_guest(tmp_path, "{name: g, kernel: /srv/kernels/vmlinuz-9.9, modules: /srv/kernels/modules}")
    out = cli("validate", str(path))
    assert out.returncode == 1 and "guests[0].kernel" in out.stderr and "Traceback" not in out.stderr
    site = tmp_path / "site"
    (site / "content").mkdir(parents=True)
    (site / "hugo.toml").write_text("")
    assert cli("status", str(path)).returncode == 0
    out = cli("build", str(path), "--site", str(site))
    assert out.returncode == 0, out.stderr


def test_an_installed_package_predicts_from_any_folder(tmp_path):
    """`pip install .` (here into a folder of its own, the dependencies from the test's environment) gives
    every subpackage and the shipped rules: predict answers where there is no checkout."""
    target, source = tmp_path / "site-packages", tmp_path / "source"  # built from a copy: the checkout stays as it is
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "generator", source / "generator", ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                          "--target", str(target), str(source)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (target / "generator" / "data" / "laws.json").is_file() and (target / "generator" / "hosts").is_dir()
    elsewhere = tmp_path / "somewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    run = subprocess.run([sys.executable, "-c", "import generator, sys; from generator.cli import main; "
                          "print(generator.__file__, file=sys.stderr); sys.exit(main())", "predict", "--guest",
                          "Debian 12", "--memory", "24GiB", "--current-memory", "1GiB", "--json"],
                         cwd=elsewhere, capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    assert str(target) in run.stderr  # the installed copy answered, not the checkout
    doc = json.loads(run.stdout)
    assert doc["records_read"].startswith("the rules shipped with memballoon")
    assert 470 < doc["sees_mib"] < 500 and doc["how"] == "from the kernel's rules (not measured at this size)"
