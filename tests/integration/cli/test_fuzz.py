"""Generated bad manifests and records through the CLI's main (in this process: a thousand runs as child
processes would take minutes; make fuzz), and hostile guest consoles through the parsers."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import shutil

import pytest

from generator.cli import main
from generator.manifest import FACTORS
from tests.support import ROOT  # noqa: F401

pytestmark = pytest.mark.fuzz


SEED = 20261126


GOOD = {
    "experiment": "fuzz",
    "hosts": [{"name": "local", "uri": "embedded", "domain_type": "qemu"}],
    "guests": [{"name": "g", "kernel": "host"}],
    "sweep": {"memory": ["1 GiB", "2 GiB"], "current_memory": ["1024 MiB"], "repeats": 1},
    "timeouts": {"boot": "60s", "stable": "3s"},
    "post": {"slug": "fuzz", "title": "Fuzz", "content": "../../content/fuzz.md"},
}


# (key path, a bad value) pairs; each alone makes the manifest invalid
BAD_VALUES = {
    ("experiment",): ["", "Bad Name", "a/b", "../x", "x\n", 7, None, ["x"], "x" * 41, ".hidden"],
    ("hosts",): [[], "local", {"name": "x"}, None, [[]], [None]],
    ("hosts", 0, "name"): ["", "A", "a b", "../h", "h\n", 1.5, True],
    ("hosts", 0, "uri"): ["", "nonsense", "qemu+ssh://h/system?no_verify=1", "x" * 5000, "a\nb", 3,
                          "qemu+ext:///system?command=/bin/sh", "qemu+unix:///system", "qemu:///system?socket=/s",
                          "qemu+ssh://h/system?netcat=/x", "qemu+ssh://h/system?keyfile=/etc/shadow",
                          "qemu+ssh://h/system?no_verify=01", "qemu+ssh://h/system?no_verify=2", "test:///default",
                          "qemu+tcp://h/system", "qemu:///embed", "qemu+ssh:///system", "qemu:///system#x",
                          "qemu:///system?x=1&x=2", "qemu+libssh://h/system?known_hosts_verify=ignore",
                          "xen+ssh://h/system?command=x", "qemu:///system?=1"],
    ("hosts", 0, "address"): ["host:22", "-oProxyCommand=x", "a b", "[::1]", "999.1.1.1", "x" * 300, 5],
    ("hosts", 0, "domain_type"): ["kvmm", "", 1, None],
    ("hosts", 0, "slots"): [0, -1, 10**9, "many", 1.5],
    ("hosts", 0, "ssh"): ["root", [1], {"port": 0}, {"port": 70000}, {"port": "22"}, {"user": "Root;rm"},
                          {"known_hosts": "/etc/ssh/ssh_known_hosts"}, {"accept_new_host_key": "yes"}],
    ("hosts", 0, "workdir"): ["/", "relative", "/var/../etc", "/tmp/a b", "/x\n", 5],
    ("guests", 0, "name"): ["", "../../etc", "g/h", "G"],
    ("guests", 0, "kernel"): ["debian:", "debian:Trixie", "debian:trixie\nmain", "", 5],
    ("guests", 0, "vcpus"): [0, 65, -3, "2", True],
    ("guests", 0, "cmdline"): ["a\nb", "\x01", 7.5j if False else [1], "rdinit=/bin/sh", "init=/x", "a -- b",
                               "console=tty0", "mem=1G", "memmap=4G$1G", "root=/dev/sda", "memballoon.mode=x",
                               "virtio_balloon.x=1", "module_blacklist=virtio_balloon", "loglevel=0", "quiet",
                               "panic=0", 'a="b c"', "memblock=debug"],
    ("guests", 0, "modules"): ["/etc", "/lib/modules", "../../../../etc", 5, "/no/such"],
    ("guests", 0, "format"): ["qcow", "vmdk", "", None, ["raw"]],
    ("guests", 0, "backing"): ["x", [1], ["/etc/hostname"]],
    ("balloon",): ["virtio", [1]],
    ("balloon", "model"): ["xen", "virtio-mem", "", None],
    ("balloon", "stats_period"): [0, "0.2s", ".inf", float("inf"), float("nan"), "-1s", "forever", "100000s"],
    ("sweep", "memory"): [[], ["1000"], [1024], ["16X"], ["1 GiB", "1 GiB"], ["0 MiB"], ["-1 GiB"],
                          ["1000000000000000000000000000000 GiB"], ["1.5 KiB"], [".nan GiB"], "1 GiB",
                          [f"{i} GiB" for i in range(1, 1200)]],
    ("sweep", "current_memory"): [[], ["4 GiB"], [None], ["1 MiB"]],
    ("sweep", "memory_model"): ["balloon", [], ["virtio"], ["balloon", "balloon"], [None]],
    ("sweep", "autodeflate"): ["yes", [1], [True, True], [], ["on"]],
    ("sweep", "free_page_reporting"): [True, [0]],
    ("sweep", "hugepages"): [[True]],
    ("hosts", 0, "memory_backing"): ["hugepages", 1, ""],
    ("guests", 0, "boot"): ["uefi", "", True],
    ("sweep", "repeats"): [0, -1, 1000000000, "3", 2.5, None],
    ("timeouts", "boot"): [0, "-5s", ".inf", float("nan"), "1e400s", "10 years", "inf"],
    ("timeouts", "stable"): ["", [], {}],
    ("post", "slug"): ["", "a/b", "../../etc", "x\n", "UPPER"],
    ("post", "title"): [None, "a\nb", "\0", "t" * 5000],
    ("post", "content"): ["/etc/hostname", "../../../../etc/passwd", "", "missing.md\0"],
    ("post", "date"): ["2026-13-45", "yesterday", "2026-02-30T10:00:00", 20261126],
    ("post", "original"): ["javascript:alert(1)", "data:text/html,x", "ftp://x", "//evil.example/x"],
    ("post", "aliases"): [["../../etc"], ["javascript:x"], "x"],
    ("post", "layout"): ["magazine", ""],
    ("results",): ["/tmp", "../../../elsewhere", "", 5],
    ("hosts", 0, "kind"): ["xen", "nested", "", None, ["nested-xen"]],
    ("hosts", 0, "nested"): ["4 GiB", {"memory": "1 GiB"}, {"memory": "4 GiB", "dom0_memory": "4 GiB"},
                             {"cpus": 0}, {"suite": "sid"}, {"boot_timeout": "0s"}, {"memroy": "4 GiB"}],
    ("guests", 0, "image"): ["debian:", "debian:Bookworm", "/no/such/disk.img", "debian:bookworm\nx", 5, ["x"],
                             "/etc/hostname", "../../../../etc/hostname", "/dev/zero"],
    ("guests", 0, "reading"): ["console", "ssh", "", None],
    ("guests", 0, "hosts"): [["elsewhere"], "local", [1], ["../x"]],
    ("guests", 0, "initrd"): ["/boot/initrd.img", "", 5],
}


# Files a sweep would boot: validate checks them, status and build (records and prose only) need not.
BOOT_FILE_KEYS = tuple(f"guests.0.{k}=" for k in ("kernel", "modules", "image", "initrd", "format", "backing"))


RAW_MANIFESTS = [
    "", "[]", "- a\n- b\n", "just text", "{", "experiment: [\n", "\t\tbad: indent\n", "a: b: c\n",
    "experiment: fuzz\nexperiment: fuzz\n", "!!python/object:os.system 'id'\n",
    "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdefgh", "bcdefghi")),
    "x: " + "[" * 5000 + "]" * 5000 + "\n", "\xff\xfe\x00garbage", "key: 2026-13-45\n",
    "post: {date: 2026-99-99}\n", "a: 1\n" * 20 + "a: 2\n",
]


def bad_manifests() -> list[tuple[str, bytes]]:
    import yaml

    cases = []
    for keypath, values in BAD_VALUES.items():
        for value in values:
            doc = json.loads(json.dumps(GOOD))
            target = doc
            for k in keypath[:-1]:
                target = target.setdefault(k, {}) if isinstance(target, dict) else target[k]
            target[keypath[-1]] = value
            text = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
            cases.append((f"{'.'.join(map(str, keypath))}={value!r}"[:80], text.encode()))
    rng = random.Random(SEED)
    for key in list(GOOD) + ["post.unknown", "sweep.currentMemory"]:  # required keys gone, unknown keys added
        doc = json.loads(json.dumps(GOOD))
        if "." in key:
            sec, k = key.split(".")
            doc[sec][k] = ["x"]
        elif key in ("experiment", "hosts", "guests", "sweep", "post"):
            del doc[key]
        else:
            doc["bogus_" + key] = rng.choice([1, "x", [1]])
        cases.append((f"missing-or-unknown {key}", yaml.safe_dump(doc).encode()))
    cases += [(f"raw {i}", raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw)
              for i, raw in enumerate(RAW_MANIFESTS)]
    return cases


def good_record(memory: int) -> dict:
    return {"experiment": "fuzz", "host": "local", "guest": "g",
            **{f.name: f.default for f in FACTORS if f.default is not None},  # every factor but the sizes
            "memory_mib": memory, "current_memory_mib": 1024, "repeat": 1, "status": "ok", "reason": "", "schema_version": 2, "free_m": {"total": 900},
            "memtotal_settled_kib": 921600, "dmesg": [], "started_at": "2026-11-26T00:00:00+00:00"}


def bad_records() -> list[tuple[str, object]]:
    """(name, content): content is bytes, a dict, or a special marker for a FIFO / symlink."""
    cases: list[tuple[str, object]] = []
    base = good_record(1024)
    for key in ["experiment", "host", "guest", "memory_mib", "current_memory_mib", "repeat", "status", "reason",
                "schema_version"]:
        r = dict(base)
        del r[key]
        cases.append((f"missing {key}", r))
    wrong = {"memory_mib": ["1024", 1024.5, None, True, [1024]], "repeat": ["1", None, {}],
             "status": ["great", "", None, 1, "OK"], "reason": [None, 5, ["x"]], "schema_version": [0, -1, "1", 99, True],
             "free_m": ["lots", [1], {"total": "x"}, {"total": [1]}, {"total": True}, None, {}, {"total": 1.5e308},
                        {"total": -1}, {"total": 0}, {"total": 10 ** 400}, {"total": 5000}, {"total": 900.5}],
             "balloon": ["x", {"actual": None, "rss": "1"}, {"actual": -1}],
             "dmesg": ["text", [1], [None], [{"a": 1}]], "console_excerpt": [{"a": 1}, [1.5]],
             "durations": [[], {"boot_s": "1"}, {"total_s": 1e300}],
             "memtotal_settled_kib": ["921600", 1.5, [1], None, -5, 0, 10 ** 12, 2 ** 70],
             "memtotal_boot_kib": [-1, 10 ** 9], "host_memory_mib": [-1, 10 ** 30], "guest_vcpus": [-2],
             "started_at": ["9999-01-01T00:00:00+00:00", "yesterday", "2026-11-26", "2026-02-30T00:00:00+00:00",
                            "2026-11-26T00:00:00", "", 5, "2026-11-26T00:00:00+00:00\n"],
             "meminfo": [5, {"MemTotal": "x"}, {"MemTotal": -1}, {"MemTotal": 1e300}],
             "balloon_timeline": ["x", [["a"]], [1, 2], [[True]], [[1.0, 2 ** 60, None]]],
             "guest_kernel": [5, ["x"]], "host": [5, None],
             "memory_mib_extra": []}
    for key, values in wrong.items():
        for v in values:
            cases.append((f"{key}={v!r}", dict(base, **{key: v})))
    cases.append(("other point's record", dict(base, memory_mib=2048)))
    cases.append(("other host's record", dict(base, host="elsewhere")))
    raw = [b"", b"{", b"[]", b"null", b"42", b'"text"', b'{"status": "ok"', b"\xff\xfe\xfd",
           json.dumps(base).encode().replace(b'"ok"', b'"\xff"'), b"[" * 100000 + b"]" * 100000,
           json.dumps(dict(base, free_m={"total": float("nan")})).encode(), b'{"status": NaN}',
           b'{"status": "ok", "memory_mib": Infinity}', b"x" * (5 * 1024 * 1024),
           json.dumps(base).encode().replace(b'"total": 900', b'"total": ' + b"9" * 4000),
           json.dumps(base).encode().replace(b'"total": 900', b'"total": ' + b"9" * 5000),
           json.dumps(base).encode().replace(b'"total": 900', b'"total": 1e400'),
           json.dumps(base).encode().replace(b'"repeat": 1', b'"repeat": 1' + b"0" * 30)]
    cases += [(f"raw {i}", r) for i, r in enumerate(raw)]
    cases += [("fifo", "FIFO"), ("symlink to /dev/zero", "/dev/zero"), ("symlink outside", "/etc/hostname"),
              ("directory", "DIR")]
    return cases


def project_snapshot() -> str:
    """A digest of the project's own files (the temporary projects are elsewhere)."""
    h = hashlib.sha256()
    for p in sorted(ROOT.rglob("*")):
        rel = p.relative_to(ROOT)
        if rel.parts[0] in (".git", ".venv", ".cache", ".pytest_cache", ".hypothesis") or "__pycache__" in rel.parts:
            continue
        if p.is_file() and not p.is_symlink():
            h.update(str(rel).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def run(*argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(argv))
    return code, err.getvalue()


def check_one_line(code: int, stderr: str, what: str, per_problem: str | None = None) -> None:
    """Exit 1, one 'error:' line, no traceback. `validate` lists every problem of a manifest, one line
    each (per_problem: the prefix every such line has)."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert code == 1, f"{what}: exit {code}: {stderr}"
    assert "Traceback" not in stderr, f"{what}: {stderr}"
    if per_problem:
        assert lines and all(ln.startswith(per_problem) for ln in lines), f"{what}: {stderr!r}"
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{what}: {stderr!r}"


@pytest.fixture
def project(tmp_path):
    proj = tmp_path / "proj"
    (proj / "experiments" / "fuzz").mkdir(parents=True)
    (proj / "content").mkdir()
    (proj / "content" / "fuzz.md").write_text("# {{ post.title }}\n\n{{ data.records | length }} records\n")
    shutil.copytree(ROOT / "site", proj / "site", ignore=shutil.ignore_patterns(
        "content", "static", "previews", "public", ".memballoon-build.json", "resources"))
    return proj


FRAGMENTS = ["9" * 4000, "1.5e308", "1e400", "-5", "nan", "inf", "²", "١٢٣", "1_000", "0x10", "", " ",
             "\x1b]52;c;cm0gLXJmIH4=\x07", "\x1b]0;title\x07", "\x1b[2J", "\r", "\x07", "\x9b31m", "\x1bP", "\x1b",
             "{{< youtube x >}}", "{{% x %}}", "$\\frac{1}{0}$", "\u202e", "\0", "\t", "6.1.0-13-amd64", "843"]


MARKERS = ["init", "kernel", "boot-memtotal-kib", "settled-memtotal-kib", "settled", "balloon-loaded", "inflate-start",
           "inflate-end", "done", "balloon-short", "insmod-failed", "settle-timeout"]


SECTIONS = {"free": "              total        used        free\nMem: {a} {b} {c}\n",
            "meminfo": "MemTotal: {a} kB\nMemFree: {b} kB\n{c}: {a} kB\n",
            "xen-balloon": "info/current_kb {a}\ntarget_kb {b}\n{c} 5\n", "dmesg": "[ 0.1] Memory: {a}K/{b}K {c}\n"}


READINGS = ["843", "863660", "6.1.0-13-amd64"]  # a real guest's: some consoles read as a plausible record


def hostile_consoles(n: int, rng: random.Random):
    def pick() -> str:
        return rng.choice(READINGS if rng.random() < 0.7 else FRAGMENTS)

    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.6:
                name = rng.choice(MARKERS)
                parts.append(f"@@MEMBALLOON {name} {pick()} {pick()}\n")
            else:
                name = rng.choice(list(SECTIONS))
                body = SECTIONS[name].format(a=pick(), b=pick(), c=pick())
                parts.append(f"@@MEMBALLOON begin {name}\n{body}@@MEMBALLOON end {name}\n")
            if rng.random() < 0.3:
                parts.append(f"[ 9.9] Out of memory: Killed process 1 ({rng.choice(FRAGMENTS)[:60]})\n"
                             f"Kernel panic - not syncing: {rng.choice(FRAGMENTS)}\n")
        yield "".join(parts)


def test_bad_manifests_and_records_fail_cleanly(project, tmp_path):
    before = project_snapshot()
    manifest = project / "experiments" / "fuzz" / "experiment.yaml"
    site = str(project / "site")
    counts = {"manifests": 0, "records": 0, "runs": 0}
    for name, data in bad_manifests():
        manifest.write_bytes(data)
        for argv in (["validate", str(manifest)], ["status", str(manifest)],
                     ["build", str(manifest), "--site", site]):
            code, stderr = run(*argv)
            if argv[0] != "validate" and name.startswith(BOOT_FILE_KEYS) and code == 0 and "Traceback" not in stderr:
                counts["runs"] += 1  # what a sweep would boot is not checked by status and build
                continue
            check_one_line(code, stderr, f"manifest {name} / {argv[0]}",
                           per_problem=f"error: {manifest}: " if argv[0] == "validate" else None)
            counts["runs"] += 1
        counts["manifests"] += 1
    import yaml

    manifest.write_text(yaml.safe_dump(GOOD))
    results = project / "experiments" / "fuzz" / "results" / "local" / "g"
    results.mkdir(parents=True)
    good = results / "memory-2048MiB-current-1024MiB-r1.json"
    good.write_text(json.dumps(good_record(2048)))
    assert run("build", str(manifest), "--site", site)[0] == 0  # the good project builds
    target = results / "memory-1024MiB-current-1024MiB-r1.json"
    for name, content in bad_records():
        if target.is_dir() and not target.is_symlink():
            target.rmdir()
        elif os.path.lexists(target):
            target.unlink()
        if content == "FIFO":
            os.mkfifo(target)
        elif content == "DIR":
            target.mkdir()
        elif isinstance(content, str):
            target.symlink_to(content)
        elif isinstance(content, dict):
            target.write_text(json.dumps(content))
        else:
            target.write_bytes(content)
        for argv in (["status", str(manifest)], ["build", str(manifest), "--site", site]):
            code, stderr = run(*argv)
            check_one_line(code, stderr, f"record {name} / {argv[0]}")
            assert str(target) in stderr, f"record {name}: the message does not name the file: {stderr}"
            counts["runs"] += 1
        counts["records"] += 1
    assert project_snapshot() == before
    print(f"\nfuzz: {counts['manifests']} bad manifests, {counts['records']} bad records, {counts['runs']} runs, "
          "every one exit 1 with one line")
    assert counts["manifests"] + counts["records"] >= 200


def test_hostile_guest_consoles_give_bounded_clean_readings():
    """Generated consoles full of huge, non-finite and foreign numbers, escape sequences and shortcodes:
    parsing never fails, every number kept is a bounded whole or finite number, every text kept is free
    of control characters, and an ok-looking record holding them is either accepted or made an error."""
    import math

    from generator import results
    from generator.guests import system
    from generator.guests.console import Console, excerpt
    from generator.readings import classify_death as _classify_death, fill_guest_view as _fill_guest_view

    def clean(text: str) -> bool:
        return not any(ord(ch) < 32 or 0x7f <= ord(ch) <= 0x9f or ch == "\u202e" for ch in text)

    rng = random.Random(SEED)
    counts = {"consoles": 0, "numbers": 0, "texts": 0, "made errors": 0, "accepted": 0}
    for text in hostile_consoles(400, rng):
        console = Console.parse(text)
        record = {"durations": {}, "guest_kernel": "6.1.0-13-amd64", "status": "ok", "reason": ""}
        _fill_guest_view(record, console, 1.0)
        _classify_death(record, console)
        texts = [record["reason"], record["guest_kernel"], *record.get("dmesg", []), *excerpt(text),
                 *system.oom_kills(console.text)]
        numbers = [record["memtotal_boot_kib"], record["memtotal_settled_kib"],
                   *(record.get("free_m") or {}).values(), *(record.get("meminfo") or {}).values(),
                   *(record.get("xen_balloon") or {}).values(), *record["durations"].values()]
        for t in texts:
            assert clean(t), repr(t)
        for v in numbers:
            assert v is None or (not isinstance(v, bool) and math.isfinite(v) and abs(v) < 1e15), v
        assert system.kernel_release(record["guest_kernel"]) == record["guest_kernel"]
        counts["consoles"] += 1
        counts["numbers"] += len(numbers)
        counts["texts"] += len(texts)
        full = dict(good_record(1024), **{k: v for k, v in record.items() if k in results.RECORD and k != "status"},
                    status="ok", schema_version=results.SCHEMA_VERSION)
        kept = results.checked(full)
        assert results._problem(kept) is None
        counts["made errors"] += kept["status"] == "error"
        counts["accepted"] += kept["status"] == "ok"
    print(f"\nfuzz: {counts['consoles']} hostile consoles, {counts['numbers']} numbers and {counts['texts']} texts "
          f"kept; of the would-be ok records {counts['accepted']} accepted, {counts['made errors']} made errors")
    assert counts["consoles"] == 400 and counts["made errors"] > 0 and counts["accepted"] > 0
