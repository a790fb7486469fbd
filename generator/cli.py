"""Command line: python -m generator validate | sweep | build | report | status.

Exit codes: 0 when the work ran (failed points are data), 1 on a user error (one line, no
traceback unless -v), 2 on usage, 130 when interrupted.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from . import __version__
from .errors import ManifestError, UserError
from .manifest import describe_schema, find_manifests, load, trusted_dirs
from .plan import check_only, points, results_dir, select, skipped_pairs
from .text import plain
from .units import mib_label

log = logging.getLogger("generator")


def _cache_dir() -> Path:
    return Path(os.environ.get("MEMBALLOON_CACHE", ".cache")).resolve()


def _manifests(args) -> list:
    paths = [Path(p) for p in args.manifests] or find_manifests(args.experiments)
    if not paths:
        raise UserError(f"no manifests: {args.experiments}/ has no */experiment.yaml or *.yaml; "
                        "name one on the command line")
    booting = args.func in (cmd_sweep, cmd_report)  # build, status: records and prose only
    trusted = trusted_dirs(args.trust or ()) if booting else ()
    manifests = [load(p, trusted, check_files=booting) for p in paths]
    check_only(getattr(args, "only", None), [points(m) for m in manifests])
    return manifests


def say(text: str = "", file=None) -> None:
    """Print one line that may hold text from a guest, a record or a manifest: without control
    characters, so no escape sequence reaches the terminal (the tool often runs as root)."""
    print(plain(text), file=file or sys.stdout)


def cmd_validate(args) -> int:
    if args.schema:
        print(describe_schema())
        return 0
    paths = [Path(p) for p in args.manifests] or find_manifests(args.experiments)
    if not paths:
        raise UserError(f"no manifests found in {args.experiments}/")
    bad = 0
    trusted = trusted_dirs(args.trust or ())
    for path in paths:
        try:
            m = load(path, trusted)
        except ManifestError as e:
            for line in e.full().splitlines():
                say(f"error: {line}", file=sys.stderr)
            bad += 1
            continue
        n = len(points(m))
        say(f"{path}: ok - experiment {m.experiment}: {len(m.hosts)} host(s), {len(m.guests)} guest(s), "
              f"{n} point(s)")
        for memory, current in skipped_pairs(m):
            print(f"  note: memory {mib_label(memory)} < currentMemory {mib_label(current)} is not measured")
    if bad:
        if len(paths) > 1:
            print(f"error: {bad} of {len(paths)} manifest(s) did not validate", file=sys.stderr)
        return 1
    return 0


def cmd_sweep(args) -> int:
    from .progress import Progress
    from .sweep import Sweep, SweepOptions

    manifests = _manifests(args)
    code = 0
    for m in manifests:
        print(f"== {m.experiment} ({m.path})", file=sys.stderr)
        options = SweepOptions(results_override=args.results, only=args.only, force=args.force,
                               retry=args.retry_failed, jobs=args.jobs)
        sweep = Sweep(m, cache_dir=_cache_dir(), options=options, progress=Progress(stream=sys.stderr))
        summary = sweep.run()
        if summary.interrupted:
            print("interrupted: finished points are saved; run the same command again to resume", file=sys.stderr)
            return 130
        if summary.host_errors:
            for message in summary.host_errors.values():
                say(f"error: {message}", file=sys.stderr)
            code = 1
    return code


def cmd_status(args) -> int:
    from . import results

    for m in _manifests(args):
        folder = results_dir(m, args.results)
        pts = select(points(m), args.only)
        counts = {"done": 0, "failed": 0, "missing": 0}
        say(f"{m.experiment}: results in {folder}")
        for p in pts:
            r = results.existing(p, folder)
            if r is None:
                state, detail = "missing", ""
            elif r["status"] == "ok":
                state = "done"
                free = (r.get("free_m") or {}).get("total")
                detail = f"free -m total {free} MiB, MemTotal {r.get('memtotal_settled_kib')} KiB, {r.get('domain_type')}"
                if r.get("reading"):
                    detail += f", read via {r['reading']}"
                check = r.get("cross_check") or {}
                if check and not check.get("agree"):
                    guest_total = check.get("agent_memtotal_kib", check.get("console_memtotal_kib"))
                    detail += (f"; DISAGREE: the guest's MemTotal {guest_total} KiB, balloon available "
                               f"{check.get('balloon_available_kib')} KiB")
                if r.get("oom_kills"):
                    detail += f"; OOM killer killed {', '.join(map(str, r['oom_kills']))}"
            else:
                state, detail = "failed", f"{r['status']}: {r.get('reason', '')}"
            counts[state] += 1
            say(f"  {state:<8} {p.key:<40} {detail}")
            if args.verbose and r is not None and r.get("phases"):
                say("           " + phase_line(r))
        say(f"  {counts['done']} done, {counts['failed']} failed, {counts['missing']} missing")
    return 0


PHASES = ("define_start", "firmware", "kernel_to_init", "module_load", "inflation", "stability", "reading",
          "teardown")


def phase_line(record: dict) -> str:
    """Where a point's time went: 'define_start 0.4 s, firmware 0.3 s, … of 25.8 s' (status -v)."""
    phases = record.get("phases") or {}
    parts = [f"{name} {phases[name + '_s']:.2f} s" for name in PHASES if phases.get(name + "_s") is not None]
    total = (record.get("durations") or {}).get("total_s")
    boot = record.get("boot_method")
    return ", ".join(parts) + (f" of {total:.1f} s" if total is not None else "") + (f" ({boot} boot)" if boot else "")


def cmd_build(args) -> int:
    from .publish.build import build_all

    build_all(_manifests(args), results_override=args.results, site=Path(args.site), clean=args.clean,
              workers=args.workers,
              layout=args.layout)
    return 0


def cmd_report(args) -> int:
    code = cmd_sweep(args)
    if code == 130:
        return code
    cmd_build(args)
    return code


def cmd_compare(args) -> int:
    from .publish.compare import as_json, compare, table

    paths = [Path(p) for p in args.manifest] or find_manifests(args.experiments)
    if not paths:
        raise UserError(f"no manifests found in {args.experiments}/")
    comparisons = [compare(load(p, check_files=False), args.old, args.new, site=Path(args.site), results_override=args.results,
                           note=lambda text: say(text, file=sys.stderr)) for p in paths]
    if args.json:
        sys.stdout.write(as_json(comparisons))
    else:
        for c in comparisons:
            for line in table(c):
                say(line)
    if args.fail_on_change and any(c.changed for c in comparisons):
        say("error: records changed (--fail-on-change)", file=sys.stderr)
        return 1
    return 0


def cmd_audit(args) -> int:
    from . import audit as au
    from .hosts import libvirt_module
    from .model import load_model

    lower_to = _size_mib("--lower-to", args.lower_to) if args.lower_to else None
    if args.enable_stats is not None and not 1 <= args.enable_stats <= 60:
        raise UserError("--enable-stats SECONDS: from 1 to 60 (audit waits two periods for the guests to report)")
    libvirt_module()
    model = load_model(Path(args.experiments))
    targets = au.targets(args.uris, args.hosts, _cache_dir(), trusted_dirs(args.trust or ()))
    opts = au.Options(agent=args.agent, enable_stats=args.enable_stats or 0, lower_to_mib=lower_to)
    say(f"auditing {len(targets)} host(s), read-only"
        + ("" if not (args.agent or args.enable_stats) else
           " except " + " and ".join(x for x in ("the guest agent's reads" if args.agent else "",
                                                f"live statistics periods of {args.enable_stats} s"
                                                if args.enable_stats else "") if x)), file=sys.stderr)
    hosts = au.audit(targets, model, opts, progress=lambda line: say(line, file=sys.stderr))
    if args.json or args.format == "json":
        sys.stdout.write(au.as_json(hosts, model))
    elif args.format == "prometheus":
        sys.stdout.write(au.as_prometheus(hosts))
    else:
        for line in au.table(hosts):
            say(line)
    if args.post:
        from .publish.audit_page import write_page

        for line in write_page(hosts, model, Path(args.site), args.post, lower_to):
            say(line, file=sys.stderr)
    return 2 if au.failed(hosts) else 0


def _size_mib(option: str, text: str) -> int:
    from .units import parse_size

    try:
        size = parse_size(text)
    except ValueError as e:
        raise UserError(f"{option} {text!r}: {e}") from None
    if size % (1024 * 1024) or size <= 0:
        raise UserError(f"{option} {text!r}: must be a positive whole number of MiB (e.g. '1536 MiB', '48 GiB')")
    return size // (1024 * 1024)


def cmd_predict(args) -> int:
    from . import predict as pr
    from .model import committed_records, guest_labels

    need = _size_mib("--need", args.need) if args.need else None
    folder = Path(args.experiments)
    if not args.table and not (folder.is_dir() and any(find_manifests(folder))):
        return _predict_shipped(pr, args, need, folder)
    records = committed_records(folder)
    if not records:
        raise UserError(f"{args.experiments}: no records to predict from; run make report first")
    if args.table:
        return _predict_table(pr, records, args, need if need is not None else 300.0)
    if not args.guest or not args.memory or not args.current_memory:
        raise UserError("predict needs --guest, --memory and --current-memory (or --table for the sizing table)")
    guest = pr.resolve_guest(records, guest_labels(Path(args.experiments)), args.guest)
    p = pr.predict(records, guest, _size_mib("--memory", args.memory),
                   _size_mib("--current-memory", args.current_memory), need, args.experiment, args.hypervisor)
    p.records_read = _records_read(Path(args.experiments), len(records))
    return _print_prediction(pr, p, args.json)


def _print_prediction(pr, p, as_json: bool) -> int:
    if as_json:
        sys.stdout.write(pr.as_json(p))
    else:
        for line in p.lines():
            say(line)
    return 0


def _predict_shipped(pr, args, need, folder: Path) -> int:
    """Outside a checkout (no manifests under --experiments): the rules shipped inside the package."""
    from .laws import shipped

    doc = shipped()
    if doc is None:
        raise UserError(f"{folder}: no experiments here, and this installation carries no fitted rules; run "
                        "predict from a checkout of the project, or give --experiments")
    if not args.guest or not args.memory or not args.current_memory:
        raise UserError("predict needs --guest, --memory and --current-memory")
    p = pr.predict_shipped(doc, args.guest, _size_mib("--memory", args.memory),
                           _size_mib("--current-memory", args.current_memory), need, args.hypervisor)
    p.records_read = f"the rules shipped with memballoon {__version__} (no experiments in {folder})"
    return _print_prediction(pr, p, args.json)


def cmd_model(args) -> int:
    """Write the fitted rules the package ships (generator/data/laws.json) from the records."""
    from .laws import SHIPPED, export
    from .model import committed_records, guest_labels
    from .results import write_atomic

    folder = Path(args.experiments)
    doc = export(committed_records(folder), guest_labels(folder))
    if not doc["laws"]:
        raise UserError(f"{folder}: no itemized records to fit the kernel's rules to")
    target = Path(args.output) if args.output else Path(__file__).resolve().parent / SHIPPED
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    if target.exists() and target.read_text() == text:
        say(f"{target}: unchanged ({len(doc['laws'])} kernel(s) and domain type(s))")
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, text)
    say(f"{target}: written ({len(doc['laws'])} kernel(s) and domain type(s))")
    return 0


def _records_read(folder: Path, count: int) -> str:
    """'220 records under experiments (3 not committed)': which records an answer rests on."""
    import subprocess

    text = f"{count} records under {folder}"
    try:
        out = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=all", "--", "."],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return text
    if out.returncode != 0:
        return text + " (not in a git checkout: whether they are committed is not known)"
    changed = sum(1 for line in out.stdout.splitlines() if line.endswith(".json"))
    return text + (f" ({changed} of them not committed)" if changed else ", all committed")


def _predict_table(pr, records, args, need: float) -> int:
    """How far memory can go for common currentMemory sizes, per kernel and hypervisor measured."""
    rows = pr.sizing_table(records, need)
    if args.hypervisor:
        rows = [r for r in rows if args.hypervisor in (r["domain_type"], r["hypervisor"].split(" ")[0].lower())]
    if not rows:
        raise UserError("predict --table: no itemized records of a ballooned guest to fit the kernel's rules to"
                        + (f" on {args.hypervisor}" if args.hypervisor else "") + "; run make report first")
    if args.json:
        sys.stdout.write(json.dumps({"format": pr.FORMAT + "-table", "version": 1, "need_mib": need, "rows": rows},
                                    indent=1) + "\n")
        return 0
    say(f"the largest memory (GiB) at which a ballooned guest survives its balloon, and (in brackets) at which "
        f"it leaves {need:,.0f} MiB for its work, by the kernel's rules fitted to the records:")
    head = ["currentMemory"] + [f"{r['hypervisor']}, {r['kernel']}" for r in rows]
    lines = [head]
    for i, c in enumerate(pr.SIZING_CURRENT):
        cells = [f"{c} MiB"]
        for r in rows:
            z = r["sizes"][i]
            cells.append(("-" if z["survives_to_mib"] is None else f"{z['survives_to_mib'] / 1024:.1f}")
                         + " (" + ("-" if z["leaves_need_to_mib"] is None else f"{z['leaves_need_to_mib'] / 1024:.1f}")
                         + ")")
        lines.append(cells)
    widths = [max(len(row[j]) for row in lines) for j in range(len(head))]
    for row in lines:
        say("  ".join(cell.rjust(w) if j else cell.ljust(w) for j, (cell, w) in enumerate(zip(row, widths))))
    for r in rows:
        say(f"{r['hypervisor']}, {r['kernel']}: {r['per_gib']:.1f} MiB per GiB of memory, and a {r['bounce_mib']:.1f} "
            "MiB bounce buffer once RAM may lie above 4 GiB")
    return 0


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("manifests", nargs="*", help="manifest files (default: every one in experiments/)")
    common.add_argument("--experiments", default="experiments", help="folder of manifests (default: %(default)s)")
    common.add_argument("--results", metavar="DIR", help="keep results in DIR/<experiment>/ instead of the manifest's")
    common.add_argument("--only", action="append", metavar="GLOB",
                        help="only points whose key matches, e.g. 'local/*/m4096-*' (repeatable)")
    common.add_argument("--trust", action="append", metavar="DIR",
                        help="let manifests boot kernels, modules and images from DIR, outside the project "
                             "(repeatable; also MEMBALLOON_TRUST=DIR:DIR)")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")

    measuring = argparse.ArgumentParser(add_help=False)
    measuring.add_argument("--force", action="store_true", help="measure points again even if recorded")
    measuring.add_argument("--retry-failed", action="store_true",
                           help="measure again points recorded as oom, panic or refused")
    measuring.add_argument("--jobs", type=int, metavar="N", help="points measured at once per host")

    building = argparse.ArgumentParser(add_help=False)
    building.add_argument("--site", default="site", help="the Hugo site folder (default: %(default)s)")
    building.add_argument("--clean", action="store_true", help="rebuild everything, ignoring the build state")
    building.add_argument("--layout", choices=("bundle", "static"),
                          help="override the manifest's post.layout")
    building.add_argument("--workers", type=int, metavar="N",
                          help="processes that render graphs (default: one per core)")

    p = argparse.ArgumentParser(prog="python -m generator",
                                description="Measure how much memory libvirt guests see under ballooning, "
                                            "and publish it.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", parents=[common], help="check manifests")
    v.add_argument("--schema", action="store_true", help="print every manifest key with its meaning")
    v.set_defaults(func=cmd_validate)
    sub.add_parser("sweep", parents=[common, measuring], help="measure missing points").set_defaults(func=cmd_sweep)
    sub.add_parser("status", parents=[common], help="show each point as done, failed or missing"
                   ).set_defaults(func=cmd_status)
    sub.add_parser("build", parents=[common, building], help="render the posts into site/").set_defaults(func=cmd_build)
    sub.add_parser("report", parents=[common, measuring, building], help="sweep, then build"
                   ).set_defaults(func=cmd_report)
    c = sub.add_parser("compare", help="what changed between two sets of records (git revisions, or one and the "
                                       "working tree)")
    c.add_argument("old", nargs="?", help="git revision (default: the results commit the post last published)")
    c.add_argument("new", nargs="?", help="git revision (default: the working tree)")
    c.add_argument("-m", "--manifest", action="append", default=[], metavar="FILE",
                   help="a manifest (repeatable; default: every one in experiments/)")
    c.add_argument("--experiments", default="experiments", help="folder of manifests (default: %(default)s)")
    c.add_argument("--results", metavar="DIR", help="records in DIR/<experiment>/ instead of the manifest's folder")
    c.add_argument("--site", default="site", help="the Hugo site whose posts name the last publication")
    c.add_argument("--json", action="store_true", help="machine-readable output (format memballoon-compare, version 1)")
    c.add_argument("--fail-on-change", action="store_true", help="exit 1 when anything moved, changed, came or went")
    c.add_argument("--trust", action="append", metavar="DIR", help=argparse.SUPPRESS)
    c.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    c.set_defaults(func=cmd_compare)
    a = sub.add_parser("audit", help="what each running guest loses to its memory ceiling, read without changing "
                                     "anything")
    a.add_argument("uris", nargs="*", metavar="URI", help="libvirt URIs: qemu:///system, qemu+ssh://root@kvm1/system, "
                                                          "xen+ssh://…")
    a.add_argument("--hosts", metavar="MANIFEST", help="the hosts of a manifest, reached as its sweep reaches them")
    a.add_argument("--format", choices=("table", "json", "prometheus"), default="table",
                   help="table (default); json: format memballoon-audit, version 1; prometheus: the text format "
                        "of node_exporter's textfile collector (docs/audit.md)")
    a.add_argument("--json", action="store_true", help="the same as --format json")
    a.add_argument("--agent", action="store_true",
                   help="read /proc/meminfo and the kernel release through the QEMU guest agent where there is one")
    a.add_argument("--enable-stats", type=int, metavar="SECONDS",
                   help="set a live balloon statistics period on guests that have none (the only change audit makes)")
    a.add_argument("--lower-to", metavar="SIZE", help="what lowering memory to SIZE would give back (default: each "
                                                      "guest's currentMemory)")
    a.add_argument("--post", metavar="SLUG", help="also write an audit page into the site, as content/audits/SLUG/")
    a.add_argument("--site", default="site", help="the Hugo site for --post (default: %(default)s)")
    a.add_argument("--experiments", default="experiments", help="the committed records to model from "
                                                                "(default: %(default)s)")
    a.add_argument("--trust", action="append", metavar="DIR", help="folders outside the project for key files")
    a.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    a.set_defaults(func=cmd_audit)
    pr = sub.add_parser("predict", help="what a guest will see at a memory ceiling, and whether it survives its "
                                        "balloon, from the committed records (no boot)")
    pr.add_argument("--guest", help="a measured guest: its name in a manifest (debian), as the posts name it "
                                    "('Debian 12') or its kernel ('6.1', '6.1.0-57-amd64')")
    pr.add_argument("--memory", metavar="SIZE", help="the ceiling, e.g. 48GiB")
    pr.add_argument("--current-memory", metavar="SIZE", help="the balloon's target, e.g. 1GiB")
    pr.add_argument("--table", action="store_true", help="the sizing table instead: for currentMemory 512 MiB to "
                                                         "4 GiB, how far memory can go, per kernel and hypervisor")
    pr.add_argument("--need", metavar="SIZE", help="what the guest's work needs once ballooned, e.g. 300MiB")
    pr.add_argument("--experiment", help="the experiment whose records to use (default: the one with the most "
                                         "sizes of that guest)")
    pr.add_argument("--hypervisor", choices=sorted({t for h in __import__("generator.hypervisors", fromlist=["x"])
                                                    .HYPERVISORS for t in (h.name, *h.domain_types)}),
                    help="kvm, qemu (TCG; as a family: QEMU with KVM or TCG) or xen; default: the domain type "
                         "with the most records of the guest")
    pr.add_argument("--experiments", default="experiments", help="folder of manifests (default: %(default)s)")
    pr.add_argument("--json", action="store_true", help="machine-readable output (format memballoon-predict, version 1)")
    pr.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    pr.set_defaults(func=cmd_predict)
    mo = sub.add_parser("model", help="write the kernel's rules fitted to the records into the package "
                                      "(generator/data/laws.json), for predict outside a checkout")
    mo.add_argument("--experiments", default="experiments", help="folder of manifests (default: %(default)s)")
    mo.add_argument("--output", help="write here instead")
    mo.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    mo.set_defaults(func=cmd_model)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "jobs", None) is not None and args.jobs < 1:
        parser().error("--jobs must be 1 or more")
    if getattr(args, "workers", None) is not None and not 1 <= args.workers <= 256:
        parser().error("--workers must be from 1 to 256")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # a connection's failure is said once, in the tool's words; paramiko's own
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # lines (at Ctrl-C too) only with -v
    try:
        return args.func(args)
    except UserError as e:
        if args.verbose:
            raise
        say(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the exit itself is not interrupted again
        print("interrupted", file=sys.stderr)
        return 130
