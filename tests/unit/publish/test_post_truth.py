"""The posts' sentences follow the records: change a record, and the sentence changes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from generator.manifest import load
from generator.publish.build import build_all
from tests.support import ROOT  # noqa: F401
from tests.support.sample import new_site  # noqa: F401


def project(tmp_path: Path, experiment: str) -> Path:
    proj = tmp_path / "proj"
    shutil.copytree(ROOT / "experiments" / experiment, proj / "experiments" / experiment)
    shutil.copytree(ROOT / "content", proj / "content")
    return proj / "experiments" / experiment / "experiment.yaml"


def page(path: Path, tmp_path: Path, name: str) -> str:
    m = load(path, check_files=False)
    site = new_site(tmp_path, name)
    build_all([m], site=site, quiet=True)
    return " ".join((site / "content" / "posts" / m.post.slug / "index.md").read_text().split())  # one line


def edit(path: Path, **changes) -> None:
    rec = json.loads(path.read_text())
    rec.update(changes)
    path.write_text(json.dumps(rec, indent=1))


def test_the_fix_autodeflate_sentence_follows_the_records(tmp_path):
    manifest = project(tmp_path, "the-fix")
    before = page(manifest, tmp_path, "a")
    assert "squeezed to 256 MiB survived at 4 GiB and 16 GiB" in before
    results = manifest.parent / "results" / "local" / "debian"
    edit(results / "memory-4096MiB-current-256MiB-autodeflate-r1.json", status="oom",
         reason="Out of memory: Killed process 9 (usleep)", memtotal_settled_kib=None, free_m=None, meminfo=None)
    after = page(manifest, tmp_path, "b")
    assert "squeezed to 256 MiB survived at 16 GiB" in after
    assert "survived at 4 GiB and 16 GiB" not in after


def test_how_low_names_what_the_oom_killer_killed(tmp_path):
    manifest = project(tmp_path, "how-low")
    before = page(manifest, tmp_path, "a")
    reasons = [json.loads(p.read_text()).get("reason", "") for p in (manifest.parent / "results").rglob("*.json")]
    usleep = sum(1 for r in reasons if "(usleep)" in r)
    assert usleep and f"it killed `usleep` in {usleep}" in before
    for path in (manifest.parent / "results").rglob("*.json"):
        rec = json.loads(path.read_text())
        if rec["status"] == "oom":
            edit(path, reason="Out of memory: Killed process 1 (init) total-vm:2260kB")
    after = page(manifest, tmp_path, "b")
    assert "it killed `init` in" in after and "`usleep`" not in after.split("## The condition")[0]


def test_the_loss_per_gib_in_the_summary_is_the_fit(tmp_path):
    manifest = project(tmp_path, "the-fix")
    before = page(manifest, tmp_path, "a")
    results = manifest.parent / "results" / "local" / "debian"
    first = json.loads((results / "memory-1024MiB-current-1024MiB-r1.json").read_text())["memtotal_settled_kib"]
    path = results / "memory-16384MiB-current-1024MiB-r1.json"
    rec = json.loads(path.read_text())
    lost = round((first - rec["memtotal_settled_kib"]) / 1024)   # from MemTotal in KiB: free -m's rounding cancels
    edit(path, memtotal_settled_kib=rec["memtotal_settled_kib"] - 100 * 1024,
         free_m=dict(rec["free_m"], total=rec["free_m"]["total"] - 100))
    after = page(manifest, tmp_path, "b")
    assert f"the ballooned one {lost} MiB" in before and f"the ballooned one {lost + 100} MiB" in after


def _committed(slug: str) -> str:
    return " ".join((ROOT / "site" / "content" / "posts" / slug / "index.md").read_text().split())


def _records(experiment: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in (ROOT / "experiments" / experiment / "results").rglob("*.json")]


def test_memory_balloonings_figures_recomputed_from_the_records():
    """The per-GiB cost, the bounce buffer's step, the currentMemory advice and the judged outcomes of the
    committed page, recomputed from the JSON records without the template or the laws."""
    import re
    import statistics

    from generator.predict import reserve_kib

    text = _committed("memory-ballooning")
    recs = [r for r in _records("memory-ballooning") if r["domain_type"] == "qemu" and r["guest"] == "debian"]

    def boot_set_aside(memory: int) -> float:
        return statistics.median(memory - r["memtotal_boot_kib"] / 1024 for r in recs
                                 if r["memory_mib"] == memory and r.get("memtotal_boot_kib"))
    per_gib = (boot_set_aside(32768) - boot_set_aside(4096)) / 28  # two powers of two, above the step
    assert f"cost it **{per_gib:.1f} MiB** of what it could use on QEMU (TCG)" in text
    step = statistics.median(r["set_aside_kib"]["bounce buffer"] for r in recs
                             if isinstance(r.get("set_aside_kib"), dict) and r["set_aside_kib"].get("bounce buffer"))
    assert f"passing 3.5 GiB cost a one-off **{step / 1024:.1f} MiB** more" in text
    # to leave 1024 MiB beyond set-aside, reserve and use at boot at 32 GiB
    at32 = [r for r in recs if r["memory_mib"] == 32768 and r.get("zone_reserves")]
    need = statistics.median(1024 + (32768 - r["memtotal_boot_kib"] / 1024) + reserve_kib(r["zone_reserves"]) / 1024
                             + (r["memtotal_boot_kib"] - sum(z["free"] for z in r["zone_reserves"]["zones"].values()))
                             / 1024 for r in at32)
    said = re.search(r"give it about \*\*([0-9,]+) MiB\*\*", text)
    assert said and abs(int(said.group(1).replace(",", "")) - need) <= 2, (said, need)
    # the sizing table's 1024 MiB row lies between the measured survival at 32 GiB and death at 64 GiB
    row = re.search(r"\| 1024 MiB \| ([0-9.]+) \(([0-9.]+)\) \|", text)
    assert row and 32 <= float(row.group(1)) < 64 and float(row.group(2)) < float(row.group(1))
    # outcomes judged: every boot that ended with its zone reserves read and MemTotal at boot known (Xen PV
    # guests too, judged on what they are built with); at least 150 over the three experiments
    def judged_in(experiment):
        return [r for r in _records(experiment) if r["status"] in ("ok", "oom", "panic") and r.get("zone_reserves")
                and r.get("memtotal_boot_kib") and r["zone_reserves"].get("zones")]
    judged = judged_in("memory-ballooning")
    assert re.search(rf"predicted \*\*{len(judged)} of\s+{len(judged)}\*\*", text), len(judged)
    xen = [r for r in judged if r["domain_type"] == "xen"]
    assert re.search(rf"{len(xen)} of them are guests built with `currentMemory` populated", text), len(xen)
    assert len(judged) + len(judged_in("how-low")) + len(judged_in("the-fix")) >= 150


def test_the_fixs_judged_outcomes_recomputed_from_the_records():
    """The-fix's count of judged outcomes, and of hotplug guests among them, from the JSON records."""
    import re

    text = _committed("the-fix")
    finished = [r for r in _records("the-fix") if r["status"] in ("ok", "oom", "panic")]
    # not judged: ballooned autodeflate guests, whose balloon gives pages back (hotplug guests inflate nothing)
    autodeflate = [r for r in finished if r.get("autodeflate") and r.get("memory_model", "balloon") == "balloon"]
    judged = [r for r in finished if r not in autodeflate and r.get("zone_reserves")
              and r.get("memtotal_boot_kib") and r["zone_reserves"].get("zones")]
    hotplug = [r for r in judged if r.get("memory_model", "balloon") != "balloon"]
    flat = " ".join(text.split())
    assert re.search(rf"predicted \*\*{len(judged)} of {len(judged)}\*\* outcomes of this sweep \({len(hotplug)} of them "
                     r"hotplug guests", flat), (len(judged), len(hotplug))
    assert autodeflate and f"({len(autodeflate)} ballooned autodeflate boots, whose balloon gives pages back" in flat


def test_how_kernels_were_started_is_said_in_each_hypervisors_words():
    """A Xen PV boot of the compressed kernel is not 'by the firmware'; a full system is not a probe."""
    from generator.publish.analysis import Data

    base = {"experiment": "e", "host": "h", "current_memory_mib": 1024, "memory_mib": 1024, "repeat": 1,
            "status": "ok"}
    records = [dict(base, guest="a", domain_type="kvm", boot_method="pvh", guest_kind="probe"),
               dict(base, guest="b", domain_type="qemu", boot_method="bzimage", guest_kind="probe"),
               dict(base, guest="s", domain_type="qemu", boot_method="kernel", guest_kind="system"),
               dict(base, guest="a", domain_type="xen", boot_method="bzimage", guest_kind="probe")]
    said = Data(records, [], 0).boot_summary()
    assert said == ["probe kernels on KVM and QEMU (TCG) through their PVH entry or by the firmware from the compressed image",
                    "the full system's kernel on QEMU (TCG) by the firmware from its own compressed kernel (the image's /boot/vmlinuz)",
                    "probe kernels on Xen as PV domains from the compressed image"]
    counts = Data(records, [], 0).kind_counts()
    assert [(c["what"], int(c["n"])) for c in counts] == [("of the probe", 3), ("of a full system", 1)]


@pytest.mark.parametrize("page", sorted((ROOT / "site" / "content" / "posts").glob("*/index.md")), ids=lambda p: p.parent.name)
def test_the_update_notice_counts_what_the_newest_update_lists(page):
    """The line at the top of a post ('Updated …: 2 points newly measured, 1 reading moved') against the
    newest entry of its update log, counted again here from the lines themselves."""
    import re
    import tomllib

    text = page.read_text()
    fm = tomllib.loads(re.match(r"\A\+\+\+\n(.*?)\n\+\+\+\n", text, re.S).group(1))
    entries = fm.get("updates") or []
    notice = re.search(r"\n\*Updated ([0-9-]{10}): (.*?) since the previous publication,", text, re.S)
    if not entries:
        assert notice is None
        return
    newest = entries[0]
    readings = newest["changes"][:newest["readings"]]
    counted: dict[str, int] = {}
    for line in readings:
        kind = ("points newly measured" if line.startswith("Newly measured: ") else
                "points no longer measured" if line.startswith("No longer measured: ") else
                "readings moved" if " now sees " in line else "outcomes changed" if ", now " in line else "changes")
        counted[kind] = counted.get(kind, 0) + 1
    if not readings:
        assert notice is None, "a notice at the top for an update that moved no reading"
        return
    assert notice and notice.group(1) == newest["date"]
    said = {}
    for n, words in re.findall(r"([0-9]+) ([a-z ]+?)(?:,|$)", " ".join(notice.group(2).split())):
        plural = {"point newly measured": "points newly measured", "reading moved": "readings moved",
                  "outcome changed": "outcomes changed", "point no longer measured": "points no longer measured",
                  "change": "changes"}.get(words, words)
        said[plural] = int(n)
    assert said == counted


def test_boot_to_boot_spread_beside_kvm_against_tcg_recomputed_from_the_records():
    """How far boots of one point differ on each accelerator, and at how many points KVM against TCG stays
    within that point's own spread, recomputed from the JSON records: points measured on KVM and on QEMU (TCG)
    with the same guest, sizes and other factors."""
    import re
    import statistics

    text = _committed("memory-ballooning")
    # the factors, with what a record that names none of one had (older records left defaults out)
    factors = {"guest": None, "memory_mib": None, "current_memory_mib": None, "cpu_model": "default",
               "memory_model": "balloon", "autodeflate": False, "plugged": 0}
    points: dict = {}
    for r in _records("memory-ballooning"):
        if r["status"] == "ok" and r["domain_type"] in ("kvm", "qemu"):
            key = tuple(r.get(f) if r.get(f) is not None else default for f, default in factors.items())
            points.setdefault(key, {}).setdefault(r["domain_type"], []).append(r)
    pairs = [v for v in points.values() if len(v) == 2]
    assert pairs, "no point was measured on both KVM and TCG"

    def spread(boots, of):
        values = [of(r) for r in boots]
        return max(values) - min(values)
    seen = lambda r: r["memtotal_settled_kib"]
    for side, label in (("kvm", "KVM"), ("qemu", "QEMU (TCG)")):
        widest = max(spread(v[side], seen) for v in pairs)
        if widest:
            assert f"on {label}, what the guest saw by up to {widest:,} KiB" in text, (label, widest)
            tables = max(spread(v[side], lambda r: r["set_aside_kib"].get("page tables", 0)) for v in pairs)
            assert not tables or re.search(rf"on {re.escape(label)}, [^;]*page tables up to {tables:,} KiB", text)
        else:
            assert f"on {label}, what the guest saw by up to" not in text
    gaps = [(abs(statistics.median(map(seen, v["kvm"])) - statistics.median(map(seen, v["qemu"]))),
             max(spread(v["kvm"], seen), spread(v["qemu"], seen))) for v in pairs]
    within = sum(1 for gap, own in gaps if gap <= own)
    if within == len(pairs):
        assert f"At every one of the {len(pairs)} points, KVM and TCG differ by no more than" in text
    elif within:
        beyond = max(gap for gap, own in gaps if gap > own)
        assert (f"At {within} of the {len(pairs)} points, KVM and TCG differ by no more than the boots of that point "
                f"differ on one of them; at the other {len(pairs) - within}, by up to {beyond:g} KiB.") in text
    else:
        assert f"At none of the {len(pairs)} points" in text


def _as_kvm(manifest: Path, up_to_mib: int) -> None:
    """Copy the QEMU (TCG) records up to a size as a nested KVM host's (a fake: the logic of a page with two
    hypervisors, not a measurement)."""
    nested = {"outer": "QEMU 7.2.22 (TCG) on this machine", "cpu_model": "max", "cpus": 1, "memory_mib": 6144,
              "suite": "bookworm", "accelerator": "kvm_amd (SVM with nested paging emulated by TCG)"}
    import yaml

    doc = yaml.safe_load(manifest.read_text())   # the manifest names the host, sweeping every size
    doc["hosts"] = [h for h in doc["hosts"] if h["name"] != "kvm"] + [
        {"name": "kvm", "kind": "nested-kvm", "guest_cmdline": "init_on_alloc=0"}]
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    results = manifest.parent / "results"
    shutil.rmtree(results / "kvm", ignore_errors=True)   # the fake's records only
    for f in sorted((results / "local" / "debian").glob("*.json")):
        rec = json.loads(f.read_text())
        if rec["memory_mib"] <= up_to_mib:
            rec.update(domain_type="kvm", host="kvm", nested=nested, host_cores=1, host_memory_mib=5923,
                       kernel_parameters="init_on_alloc=0")
            (results / "kvm" / "debian").mkdir(parents=True, exist_ok=True)
            (results / "kvm" / "debian" / f.name).write_text(json.dumps(rec))


def test_how_low_tells_each_hypervisors_line_apart(tmp_path):
    """With KVM records beside TCG's, how-low gives each hypervisor's smallest surviving target, section and
    table, says whether the same targets lived and died, names the kernel parameter the KVM boots had, and
    every number of the page is answered again from the records (claims selecting one domain type)."""
    from tests.unit.publish.test_claims import _records, check_claims, unlisted_numbers

    manifest = project(tmp_path, "how-low")
    _as_kvm(manifest, 16384)
    text = page(manifest, tmp_path, "a")
    assert "survived was, on KVM, **256 MiB** at 1 GiB, **512 MiB** at 4 GiB, **1024 MiB** at 16 GiB; on QEMU (TCG)," \
        in text
    assert "### On KVM" in text and "### On QEMU (TCG)" in text and "On KVM: | memory |" in text
    assert "At every size both tried with the same targets (1 GiB, 4 GiB and 16 GiB), the same targets lived and " \
           "died on each." in text
    assert "12 on KVM, `memory` at 1 GiB, 4 GiB, 16 GiB and `currentMemory` at 128, 256, 512, 1024 MiB" in text
    assert "the 12 boots had `init_on_alloc=0` on their kernel's command line (to save time" in text
    assert "the boots they are compared with did not." in text
    assert "Host **kvm** ran the kernel's own KVM, nested" in text
    assert "12 on KVM and 16 on QEMU (TCG), it predicts" in text

    def claims_hold(name: str) -> None:
        from generator.manifest import load
        m = load(manifest, check_files=False)
        site = tmp_path / name
        doc = json.loads((site / "claims" / f"{m.post.slug}.json").read_text())
        assert check_claims(m, doc, _records(m)) == []
        assert unlisted_numbers((site / "content" / "posts" / m.post.slug / "index.md").read_text(), doc) == []
    claims_hold("a")
    # one KVM point dies where TCG's lived: the line moves on KVM only, and the page says where
    edit(manifest.parent / "results" / "kvm" / "debian" / "memory-4096MiB-current-512MiB-r1.json", status="oom",
         reason="Out of memory: Killed process 9 (usleep)", memtotal_settled_kib=None, free_m=None, meminfo=None)
    after = page(manifest, tmp_path, "b")
    assert "on KVM, **256 MiB** at 1 GiB, **1024 MiB** at 4 GiB" in after
    assert "different ones lived and died at 4 GiB (the same ones at 1 GiB and 16 GiB)." in after
    kvm, tcg = after.split("### On KVM")[1].split("### On QEMU (TCG)")
    assert "**memory 4 GiB**" in kvm and "Survived down to 1024 MiB; died at 512 MiB and below" in kvm
    assert "Survived down to 512 MiB; died at 256 MiB and below" in tcg.split("**memory 16 GiB**")[0]
    assert "| 4 GiB | **OOM** | **OOM** | **OOM** | 843 (181) |" in after.split("On KVM: |")[1].split("On QEMU")[0]
    claims_hold("b")
    # a target KVM never tried at 4 GiB: that size is not compared at all
    (manifest.parent / "results" / "kvm" / "debian" / "memory-4096MiB-current-512MiB-r1.json").unlink()
    third = page(manifest, tmp_path, "c")
    assert "the same targets lived and died on each" in third and "(1 GiB and 16 GiB)" in third
    assert "different ones" not in third
