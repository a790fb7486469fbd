"""Audit running hosts: for every running guest, what it sees of its `currentMemory`, how much of the
loss its `memory` ceiling costs, and what lowering the ceiling would give back. Read without
touching anything.

Each host is reached as a sweep reaches it (the same URIs, the same host-key rules: an SSH host's
key is verified by Fabric first and libvirt's transport pinned to it), over a read-only libvirt
connection. What is read per domain: `info()` (state, `memory`, the balloon now), the domain XML
(live and, for a persistent domain, the configured `currentMemory`), and the balloon statistics,
whose `available` is the guest's own MemTotal. Nothing is changed, unless asked:

- `--enable-stats SECONDS` sets a balloon statistics period on the domains that have none (live
  only, not in their configuration), for a guest that reports nothing otherwise;
- `--agent` reads /proc/meminfo and the kernel release through the QEMU guest agent, where the
  domain has one.

The cost of the ceiling comes from the committed records (model.py): the loss curve of the guest's
kernel where it was measured, else an estimate from the kernels measured, said as such. Domain
names, titles, descriptions and agent output are someone else's text: bounded and stripped of
control characters before they reach a terminal, and escaped by the JSON and Markdown writers.
"""
from __future__ import annotations

import datetime as _dt
import json
import re
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from . import hypervisors
from .errors import UserError, daemon_hint, libvirt_message
from .model import Model
from .text import bounded_int, plain

FORMAT, VERSION = "memballoon-audit", 1
MAX_TEXT = 200             # characters kept of a name, title or description
MAX_XML = 4 * 1024 * 1024  # a domain XML larger than this is not read
MAX_HOSTS_AT_ONCE = 8
AGENT_TIMEOUT = 5          # seconds for one guest-agent command
AGENT_CHANNEL = "org.qemu.guest_agent.0"
STALE_AFTER = 30           # seconds: balloon statistics older than this (and 3 periods) are not read as now


def _text(value, limit: int = MAX_TEXT) -> str:
    """Someone else's text, safe for a terminal line: no control characters, bounded."""
    text = plain(value if isinstance(value, str) else "")
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class GuestRow:
    name: str
    title: str = ""
    domain_type: str = ""
    memory_mib: float | None = None          # <memory>: the ceiling
    current_memory_mib: float | None = None  # <currentMemory>: the balloon's target
    balloon_mib: float | None = None         # what the balloon gives the guest now
    sees_mib: float | None = None            # the guest's MemTotal
    sees_from: str = ""                      # 'balloon statistics' | 'guest agent'
    unknown_why: str = ""                    # when sees_mib is None
    stats_period: int | None = None
    kernel: str = ""
    kernel_from: str = ""
    lost_mib: float | None = None            # currentMemory - what the guest sees
    ceiling_mib: float | None = None         # the part of the loss the ceiling costs (model)
    give_back_mib: float | None = None       # lowering memory to lower_to_mib gives back this much
    lower_to_mib: float | None = None
    basis: str = ""                          # what the ceiling's cost rests on
    warning: str = ""
    changed: str = ""                        # what --enable-stats changed, if anything


@dataclass
class HostAudit:
    name: str
    uri: str
    error: str = ""
    guests: list[GuestRow] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def totals(self) -> dict:
        def total(key):
            values = [getattr(g, key) for g in self.guests if getattr(g, key) is not None]
            return round(sum(values), 1) if values else None
        return {"guests": len(self.guests), "lost_mib": total("lost_mib"), "ceiling_mib": total("ceiling_mib"),
                "give_back_mib": total("give_back_mib"), "warnings": sum(1 for g in self.guests if g.warning)}


@dataclass
class Options:
    agent: bool = False
    enable_stats: int = 0            # seconds; 0 = read only
    lower_to_mib: int | None = None  # default: each guest's currentMemory
    wait: Callable[[float], None] = time.sleep


# --- one domain -------------------------------------------------------------------------------------
def _kib_of(root, tag: str) -> float | None:
    el = root.find(tag)
    if el is None or el.text is None:
        return None
    value = bounded_int(el.text.strip())
    if value is None:
        return None
    unit = (el.get("unit") or "KiB").lower()
    scale = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "m": 1024, "mib": 1024, "g": 1024 ** 2, "gib": 1024 ** 2,
             "kb": 1000 / 1024, "mb": 1000 ** 2 / 1024, "gb": 1000 ** 3 / 1024}.get(unit)
    return None if scale is None else value * scale


def _xml(dom, flags: int = 0):
    text = dom.XMLDesc(flags)
    if not isinstance(text, str) or len(text) > MAX_XML:
        raise ValueError("domain XML missing or too large")
    return ET.fromstring(text)


def _stats_period(root) -> tuple[bool, int | None]:
    """(has a balloon device, its statistics period or None)."""
    balloon = root.find("./devices/memballoon")
    if balloon is None or balloon.get("model") == "none":
        return False, None
    stats = balloon.find("stats")
    period = bounded_int((stats.get("period") or "").strip()) if stats is not None else None
    return True, period or None


def _kernel_from_xml(root) -> str:
    el = root.find("./os/kernel")
    if el is None or not el.text:
        return ""
    m = re.search(r"vmlinu[xz]-(\d+\.\d+[\w.+~-]*)", el.text)
    return m.group(1)[:64] if m else ""


def _has_agent(root) -> bool:
    return any(t.get("name") == AGENT_CHANNEL for t in root.iterfind("./devices/channel/target"))


def _agent(dom, command: dict):
    import libvirt_qemu

    reply = libvirt_qemu.qemuAgentCommand(dom, json.dumps(command), AGENT_TIMEOUT, 0)
    if not isinstance(reply, str) or len(reply) > 1024 * 1024:
        raise ValueError("agent reply missing or too large")
    return json.loads(reply).get("return")


def _agent_meminfo(dom) -> tuple[float | None, str]:
    """MemTotal (MiB) and the kernel release through the guest agent: reads, nothing written."""
    import base64

    handle = _agent(dom, {"execute": "guest-file-open", "arguments": {"path": "/proc/meminfo", "mode": "r"}})
    try:
        data = _agent(dom, {"execute": "guest-file-read", "arguments": {"handle": handle, "count": 65536}})
    finally:
        _agent(dom, {"execute": "guest-file-close", "arguments": {"handle": handle}})
    text = base64.b64decode((data or {}).get("buf-b64", ""), validate=False)[:65536].decode("ascii", "replace")
    m = re.search(r"^MemTotal:\s+([0-9]{1,15}) kB", text, re.M)
    release = ""
    try:
        osinfo = _agent(dom, {"execute": "guest-get-osinfo"}) or {}
        release = _text(osinfo.get("kernel-release", ""), 64)
    except Exception:  # noqa: BLE001 - an older agent: the release stays unknown
        pass
    return (int(m.group(1)) / 1024 if m else None), release


class Stopped(Exception):
    """The domain stopped between the host's list and its reading."""


MAX_KIB = 1 << 42  # 4 PiB: libvirt's figures beyond this are not a guest's


def audit_domain(dom, model: Model | None, opts: Options, read_again: bool = False) -> GuestRow:
    """One running domain's row. Reads only (see the module's docstring for the two opt-ins)."""
    import libvirt

    row = GuestRow(name=_text(dom.name()))
    live = _xml(dom)
    row.domain_type = _text(live.get("type") or "", 16)
    row.title = _text((live.findtext("title") or "").strip())
    state, max_kib, now_kib, *_ = dom.info()
    if state in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED):
        raise Stopped()  # it stopped after the host listed it: not running, not a row
    if not 0 < (max_kib or 0) <= MAX_KIB or not 0 <= (now_kib or 0) <= max_kib:
        raise ValueError(f"libvirt reports memory {max_kib} KiB, balloon {now_kib} KiB: not figures of a guest")
    row.memory_mib = (max_kib or _kib_of(live, "memory") or 0) / 1024 or None
    row.balloon_mib = now_kib / 1024 if now_kib else None
    configured = None
    if dom.isPersistent():
        try:
            configured = _kib_of(_xml(dom, libvirt.VIR_DOMAIN_XML_INACTIVE), "currentMemory")
        except (libvirt.libvirtError, ValueError, ET.ParseError):
            configured = None
    target = configured or _kib_of(live, "currentMemory")
    row.current_memory_mib = target / 1024 if target else None
    has_balloon, period = _stats_period(live)
    row.stats_period = period
    row.kernel, row.kernel_from = _kernel_from_xml(live), "the domain's kernel file"
    if not row.kernel:
        row.kernel_from = ""
    hv = hypervisors.known(row.domain_type)
    fam = hv.name if hv else ""
    stats = {}
    if has_balloon:
        try:
            stats = dom.memoryStats() or {}
        except libvirt.libvirtError as e:
            stats, row.unknown_why = {}, f"balloon statistics unreadable: {_text(libvirt_message(e), 120)}"
    available = stats.get("available") if isinstance(stats.get("available"), int) else None
    if available is not None and not 0 < available <= max_kib:
        row.unknown_why = (f"the guest reports {available} KiB available, not between 0 and its memory "
                           f"({max_kib} KiB): not read")
        available = None
    updated = stats.get("last_update") if isinstance(stats.get("last_update"), int) else None
    # Without a period the guest reported once, when its driver loaded (before the balloon took
    # anything): a figure that old is not what it sees now.
    if available and period:
        # last_update is the host's clock, time.time() this machine's: a large age says the guest stopped
        # reporting, or that the clocks differ; either way the figure is not read as now
        age = time.time() - updated if updated else None
        if age is not None and age > max(STALE_AFTER, 3 * period):
            row.unknown_why = (f"the balloon statistics were last updated {age:.0f} s ago by this machine's clock "
                               f"(period {period} s): the guest stopped reporting, or the host's clock differs")
        else:
            row.sees_mib, row.sees_from = available / 1024, "balloon statistics"
    if opts.agent and _has_agent(live) and (row.sees_mib is None or not row.kernel):
        try:
            total, release = _agent_meminfo(dom)
            if row.sees_mib is None and total and 0 < total <= max_kib / 1024:
                row.sees_mib, row.sees_from = total, "guest agent"
            elif row.sees_mib is None and total:
                row.unknown_why = f"the guest agent reports MemTotal {total:.0f} MiB, more than its memory: not read"
            if release:
                row.kernel, row.kernel_from = release, "the guest agent"
        except Exception as e:  # noqa: BLE001 - the agent is optional: say why it did not answer
            why = libvirt_message(e)
            row.unknown_why = row.unknown_why or f"guest agent: {_text(why, 120)}"
    if row.sees_mib is None and not row.unknown_why:
        if not has_balloon:
            row.unknown_why = "no balloon device" + (" (the guest agent is read with --agent)" if _has_agent(live)
                                                     and not opts.agent else "")
        elif hv is None:
            row.unknown_why = (f"a {row.domain_type or 'typeless'} domain: not a hypervisor this tool knows, so its "
                               "balloon statistics are not read as a guest's MemTotal")
        elif hv.no_guest_stats:
            row.unknown_why = (hv.no_guest_stats
                               + ("; --agent reads the guest's own" if _has_agent(live) and not opts.agent else ""))
        elif not period:
            row.unknown_why = ("no balloon statistics period (its figures date from its boot): --enable-stats "
                               "SECONDS sets one (live only), or add <stats period='5'/> to its <memballoon>")
        else:
            row.unknown_why = "the guest reports no statistics (is its virtio_balloon driver loaded?)"
    if row.sees_mib is not None and row.current_memory_mib:
        row.lost_mib = round(row.current_memory_mib - row.sees_mib, 1)
    _apply_model(row, fam, model, opts)
    if row.balloon_mib and row.current_memory_mib and row.balloon_mib - row.current_memory_mib > 1:
        row.warning = _join(row.warning, f"the balloon is not at its target yet ({row.balloon_mib:.0f} of "
                                         f"{row.current_memory_mib:.0f} MiB)")
    return row


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


def _apply_model(row: GuestRow, fam: str, model: Model | None, opts: Options) -> None:
    """The ceiling's share of the loss, what lowering it gives back, and the survival check."""
    if model is None or not row.memory_mib or not row.current_memory_mib:
        return
    if not fam:
        row.basis = f"no measurements for {row.domain_type or 'typeless'} domains: no estimate"
        return
    curve, basis = model.curve(fam, row.kernel)
    if curve is None:
        row.basis = basis
        return
    at_ceiling, how = curve.lost(row.memory_mib)
    at_current, _ = curve.lost(min(row.current_memory_mib, row.memory_mib))
    row.ceiling_mib = round(max(0.0, at_ceiling - at_current), 1)
    # memory can be lowered to currentMemory, not below it (libvirt refuses a ceiling under the target)
    lower_to = min(max(opts.lower_to_mib or row.current_memory_mib, row.current_memory_mib), row.memory_mib)
    row.lower_to_mib = lower_to
    row.give_back_mib = round(max(0.0, at_ceiling - curve.lost(lower_to)[0]), 1)
    row.basis = basis + ("" if how in ("measured", "interpolated") else f"; {how}")
    bounds = model.bounds.get(fam)
    if bounds and bounds.died_max is not None:
        left = row.current_memory_mib - at_ceiling
        if left <= bounds.died_max:
            row.warning = (f"a boot at this ceiling leaves about {left:.0f} MiB once ballooned to currentMemory; "
                           f"measured guests died with up to {bounds.died_max:.0f} MiB left")
        elif bounds.survived_min is not None and left < bounds.survived_min:
            row.warning = (f"at risk: a boot at this ceiling leaves about {left:.0f} MiB once ballooned; measured "
                           f"guests died with up to {bounds.died_max:.0f} and survived with {bounds.survived_min:.0f}")


# --- one host ---------------------------------------------------------------------------------------
@dataclass
class Target:
    """A host to audit: its name, its URI, and how to open it (pinned and verified for SSH)."""
    name: str
    uri: str
    open: Callable[[bool], object]   # open(read_only) -> a libvirt connection


def audit_host(target: Target, model: Model | None, opts: Options) -> HostAudit:
    """Every running domain of one host; any failure of the host is its error line, never a crash."""
    import libvirt

    t0 = time.monotonic()
    out = HostAudit(_text(target.name, 60), _text(_redact(target.uri), 300))
    conn = None
    try:
        conn = target.open(not (opts.agent or opts.enable_stats))
        domains = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        changed = _enable_stats(domains, opts) if opts.enable_stats else {}
        for dom in domains:
            try:
                out.guests.append(audit_domain(dom, model, opts))
            except Stopped:
                continue
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # it stopped while the host was being audited: not running, not a row
                out.guests.append(GuestRow(name=_safe_name(dom), unknown_why=f"libvirt: {_text(libvirt_message(e), 160)}"))
            except ET.ParseError as e:
                out.guests.append(GuestRow(name=_safe_name(dom), unknown_why=f"unreadable domain XML: {_text(str(e), 120)}"))
            except Exception as e:  # noqa: BLE001 - one domain's surprise is its row, the host goes on
                out.guests.append(GuestRow(name=_safe_name(dom),
                                           unknown_why=f"not read: {type(e).__name__}: {_text(str(e), 120)}"))
        for row in out.guests:
            row.changed = changed.get(row.name, "")
    except libvirt.libvirtError as e:
        out.error = f"libvirt: {_text(libvirt_message(e), 300)}"
    except UserError as e:
        out.error = _text(str(e), 400)
    except Exception as e:  # noqa: BLE001 - one host's failure is its line, the others go on
        out.error = f"{type(e).__name__}: {_text(str(e), 300)}"
    finally:
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass
    out.guests.sort(key=lambda g: (-(g.give_back_mib or 0), g.name))
    out.seconds = time.monotonic() - t0
    return out


def _safe_name(dom) -> str:
    try:
        return _text(dom.name())
    except Exception:  # noqa: BLE001
        return "?"


def _enable_stats(domains, opts: Options) -> dict[str, str]:
    """--enable-stats: a live statistics period on the domains with a balloon and none; then one
    period's wait so the guests report."""
    import libvirt

    changed = {}
    for dom in domains:
        try:
            has_balloon, period = _stats_period(_xml(dom))
            if has_balloon and not period:
                dom.setMemoryStatsPeriod(opts.enable_stats, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                changed[_text(dom.name())] = f"statistics period set to {opts.enable_stats} s (live only)"
        except (libvirt.libvirtError, ValueError, ET.ParseError):
            continue
    if changed:
        opts.wait(2 * opts.enable_stats + 1)
    return changed


def _redact(uri: str) -> str:
    """A URI as shown: without a password, should one be in it."""
    return re.sub(r"//([^/@:]*):[^/@]*@", r"//\1:***@", uri)


def audit(targets: list[Target], model: Model | None, opts: Options, progress: Callable[[str], None] | None = None
          ) -> list[HostAudit]:
    """Every host, several at once; the results in the order given."""
    results: list[HostAudit | None] = [None] * len(targets)
    lock = threading.Lock()
    slots = threading.Semaphore(max(1, min(MAX_HOSTS_AT_ONCE, len(targets))))

    def one(i: int) -> None:
        with slots:
            results[i] = audit_host(targets[i], model, opts)
        if progress:
            with lock:
                r = results[i]
                progress(f"  {r.name}: " + (f"failed: {r.error}" if r.error else
                                            f"{len(r.guests)} running guest(s) in {r.seconds:.1f} s"))
    # Daemon threads, waited for in short joins: Ctrl-C ends the audit at once, and a host that
    # stalls (an SSH connection that will only time out) does not hold the exit back.
    threads = [threading.Thread(target=one, args=(i,), daemon=True, name=f"audit-{i}") for i in range(len(targets))]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)
    return [r for r in results if r is not None]


# --- output -----------------------------------------------------------------------------------------
def _num(value, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def table(hosts: list[HostAudit]) -> list[str]:
    """The terminal table: per host, its guests sorted by what could be given back, and totals."""
    lines = []
    head = ("guest", "memory", "current", "balloon", "sees", "lost", "ceiling", "give back")
    for h in hosts:
        lines.append(f"== {h.name} ({h.uri})")
        if h.error:
            lines.append(f"   failed: {h.error}")
            continue
        if not h.guests:
            lines.append("   no running guests")
            continue
        width = min(32, max(5, *(len(g.name) for g in h.guests)))
        lines.append(f"   {head[0]:<{width}} " + " ".join(f"{c:>9}" for c in head[1:]) + "  (MiB)")
        for g in h.guests:
            name = g.name if len(g.name) <= width else g.name[: width - 1] + "…"
            cells = [g.memory_mib, g.current_memory_mib, g.balloon_mib, g.sees_mib, g.lost_mib, g.ceiling_mib,
                     g.give_back_mib]
            lines.append(f"   {name:<{width}} " + " ".join(f"{_num(c):>9}" for c in cells))
            notes = []
            if g.sees_mib is None:
                notes.append(f"sees: unknown, {g.unknown_why}")
            elif g.sees_from != "balloon statistics":
                notes.append(f"sees: from the {g.sees_from}")
            if g.basis and g.ceiling_mib is not None and not g.basis.startswith("measured for"):
                notes.append(g.basis)
            if g.changed:
                notes.append(g.changed)
            if g.warning:
                notes.append(f"WARNING: {g.warning}")
            lines += [f"   {'':<{width}}   {n}" for n in notes]
        t = h.totals
        lines.append(f"   total: {t['guests']} guest(s); {_num(t['lost_mib'])} MiB lost where the guest's view is known; "
                     f"the ceilings cost {_num(t['ceiling_mib'])} MiB by the measured curves, and lowering them gives "
                     f"back {_num(t['give_back_mib'])} MiB"
                     + (f"; {t['warnings']} warning(s)" if t["warnings"] else ""))
    return [plain(line) for line in lines]


def as_json(hosts: list[HostAudit], model: Model | None) -> str:
    """The documented, versioned shape (docs/audit.md)."""
    doc = {"format": FORMAT, "version": VERSION,
           "generated_at": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
           "model_records": model.records if model else 0,
           "hosts": [{"name": h.name, "uri": h.uri, "error": h.error or None, "seconds": round(h.seconds, 3),
                      "totals": h.totals, "guests": [asdict(g) for g in h.guests]} for h in hosts]}
    return json.dumps(doc, indent=1, ensure_ascii=True) + "\n"


# Per domain, in bytes (Prometheus' base unit); a figure audit could not state is left out, never 0.
PROMETHEUS_GAUGES = (
    ("memory_bytes", "memory_mib", "libvirt's memory: the guest's ceiling"),
    ("current_memory_bytes", "current_memory_mib", "libvirt's currentMemory: what the balloon is told to leave"),
    ("balloon_bytes", "balloon_mib", "what the balloon gives the guest now"),
    ("sees_bytes", "sees_mib", "the guest's own MemTotal"),
    ("lost_bytes", "lost_mib", "currentMemory minus what the guest sees"),
    ("lost_to_ceiling_bytes", "ceiling_mib", "the part of the loss the ceiling costs, from the kernel's rules"),
    ("give_back_bytes", "give_back_mib", "what lowering memory would give back to the guest"),
)


def as_prometheus(hosts: list[HostAudit]) -> str:
    """The figures in Prometheus' text format (node_exporter's textfile collector reads it), written by
    prometheus_client, which escapes the label values (host and domain names are anyone's text)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily

    class Audit:
        def collect(self):
            up = GaugeMetricFamily("memballoon_audit_host_up", "1 if the host was read, 0 if it failed",
                                   labels=["host"])
            seconds = GaugeMetricFamily("memballoon_audit_host_seconds", "how long reading the host took",
                                        labels=["host"])
            families = [(GaugeMetricFamily(f"memballoon_guest_{name}", what, labels=["host", "domain"]), field_)
                        for name, field_, what in PROMETHEUS_GAUGES]
            for h in hosts:
                up.add_metric([h.name], 0 if h.error else 1)
                seconds.add_metric([h.name], round(h.seconds, 3))
                for g in h.guests:
                    for family, field_ in families:
                        value = getattr(g, field_)
                        if value is not None:
                            family.add_metric([h.name, g.name], round(value * 1024 * 1024))
            yield up
            yield seconds
            for family, _ in families:
                yield family

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Audit())
    return generate_latest(registry).decode("utf-8")


def failed(hosts: list[HostAudit]) -> bool:
    return any(h.error for h in hosts)


# --- which hosts --------------------------------------------------------------------------------------
def _opener(spec, cache_dir: Path) -> Callable[[bool], object]:
    """How to open one host: an SSH host's key is verified through Fabric first and libvirt's own SSH
    pinned to that key (hosts/ssh.py), exactly as for a sweep; a local URI is opened directly."""
    def open_(read_only: bool):
        from .hosts import SSHHost, libvirt_module

        libvirt = libvirt_module()
        uri = spec.uri
        if spec.is_remote:
            runtime = SSHHost(spec, cache_dir)
            try:
                runtime.run("true", hide=True)   # refuses an unknown or changed host key, with the line to add
                uri = runtime.uri
            finally:
                runtime.connection.close()
        try:
            return libvirt.openReadOnly(uri) if read_only else libvirt.open(uri)
        except libvirt.libvirtError as e:
            message = libvirt_message(e)
            raise UserError(f"cannot open libvirt at {_redact(spec.uri)}: {message}{daemon_hint(uri, message)}") \
                from None
    return open_


def _unusable(spec) -> str:
    if spec.is_nested:
        return f"a {spec.kind} host that the tool boots for its sweeps; no guests of yours run there"
    if spec.is_embedded:
        return ("'embedded' is libvirt's driver inside one process, with no guests of other processes; audit "
                "qemu:///system or a remote URI")
    return ""


def targets(uris: list[str], manifest_path: str | None, cache_dir: Path, trusted: tuple = ()) -> list[Target]:
    """The hosts named on the command line (libvirt URIs) and those of a manifest (--hosts)."""
    from .manifest import host_from_uri, load

    specs = []
    if manifest_path:
        specs += list(load(manifest_path, trusted, check_files=False).hosts)
    used = {s.name for s in specs}
    for uri in uris:
        base = re.sub(r"[^a-z0-9-]+", "-", (_host_part(uri) or "local").lower()).strip("-")[:32] or "host"
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}-{n}"
        used.add(name)
        specs.append(host_from_uri(uri, name, trusted))
    if not specs:
        raise UserError("audit: name a libvirt URI (e.g. qemu:///system, qemu+ssh://root@kvm1/system) or --hosts "
                        "MANIFEST")
    out = []
    for spec in specs:
        why = _unusable(spec)
        if why:
            out.append(Target(spec.name, spec.uri, _refuse(f"host {spec.name}: {why}")))
        else:
            out.append(Target(spec.name, spec.uri, _opener(spec, cache_dir)))
    return out


def _refuse(message: str) -> Callable[[bool], object]:
    def open_(read_only: bool):
        raise UserError(message)
    return open_


def _host_part(uri: str) -> str:
    import urllib.parse

    try:
        return urllib.parse.urlsplit(uri).hostname or ""
    except ValueError:
        return ""
