"""Experiment manifests: YAML validated against one schema declared here.

The schema is the dataclasses below. Each field carries its converter and a docstring in its
metadata; `_load_section` walks them generically, so a key is declared exactly once. Every problem
is collected with its key path (``sweep.memory[3]``) and reported together; unknown keys are
rejected with the closest known key as a hint.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib
import hashlib
import ipaddress
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from . import hypervisors
from .guests import sources
from .errors import ManifestError, UserError
from .safe import is_inside, read_regular
from .units import parse_duration, parse_size

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,39}")  # used with fullmatch: no '/', no newline, no leading '.'
EMBEDDED = "embedded"  # the manifest's name for libvirt's in-process QEMU driver on this machine
# nested host kinds (hosts/nested_*.py) and the domain type each runs
NESTED_KINDS = {"nested-xen": "xen", "nested-kvm": "kvm"}

# Bounds on what a manifest may ask for: a manifest may come from someone else, and a typo in a
# size must not become a plan of a billion points or a 31-digit guest.
MAX_MANIFEST_BYTES = 256 * 1024
MAX_YAML_NODES = 20_000      # after expanding aliases (a "billion laughs" manifest stops here)
MAX_LIST_ITEMS = 1000
MAX_POINTS = 20_000
MAX_REPEATS = 1000
MAX_TEXT = 4000
MAX_MEMORY_MIB = 16 * 1024 * 1024   # 16 TiB: beyond any x86_64 host libvirt manages today
MIN_MEMORY_MIB = 16                 # below this no Linux kernel boots
MAX_SECONDS = 7 * 24 * 3600.0


class _Problems(list):
    """Problems found so far; `check_files` says whether this load checks the files a sweep would
    boot (kernels, modules, images: validate, sweep, report) or only what publishing needs."""

    check_files = True

    def add(self, path: str, message: str) -> None:
        self.append(f"{path}: {message}" if path else message)


# --- converters: (value, path, problems, ctx) -> converted value, or _BAD -------------------------
_BAD = object()
_REQUIRED = object()


def _name(value, path, problems, ctx):
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        problems.add(path, f"{value!r} is not a valid name (lowercase letters, digits, '-', '_', '.'; at most 40)")
        return _BAD
    return value


_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _text(value, path, problems, ctx):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        problems.add(path, f"{value!r} is not text")
        return _BAD
    if len(value) > MAX_TEXT:
        problems.add(path, f"is {len(value)} characters long; at most {MAX_TEXT}")
        return _BAD
    if _CONTROL_RE.search(value):
        problems.add(path, "contains control characters; only printable text, tabs and newlines")
        return _BAD
    return value


def _line(value, path, problems, ctx):
    """Text on one line (titles, labels, URIs)."""
    value = _text(value, path, problems, ctx)
    if value is not _BAD and ("\n" in value or "\r" in value):
        problems.add(path, "must be on one line")
        return _BAD
    return value


def _int_in(low: int, high: int) -> Callable:
    def convert(value, path, problems, ctx):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            problems.add(path, f"{value!r} is not a whole number from {low} to {high}")
            return _BAD
        return value
    return convert




def _flag(value, path, problems, ctx):
    if not isinstance(value, bool):
        problems.add(path, f"{value!r} is not true or false")
        return _BAD
    return value


def _slots(value, path, problems, ctx):
    if value == "auto":
        return 0
    return _int_in(1, 256)(value, path, problems, ctx)


def _mib(value, path, problems, ctx):
    try:
        size = parse_size(value)
    except ValueError as e:
        problems.add(path, str(e))
        return _BAD
    if size % (1024 * 1024) or size <= 0:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT])B\s*", str(value), re.I)
        if m and size > 0:  # a decimal unit (libvirt's GB = 10^9 bytes): say what it is and what was meant
            binary = f"{m.group(1)} {m.group(2).upper()}iB"
            problems.add(path, f"{value!r} is {size:,} bytes ({size / 1024 ** 2:,.2f} MiB): libvirt's {m.group(2).upper()}B "
                               f"is decimal (10^{3 * 'KMGT'.index(m.group(2).upper()) + 3} bytes), not a whole number "
                               f"of MiB; write {binary!r} if that is what you mean")
        else:
            problems.add(path, f"{value!r} must be a positive whole number of MiB (e.g. '1536 MiB', '2 GiB')")
        return _BAD
    mib = size // (1024 * 1024)
    if not MIN_MEMORY_MIB <= mib <= MAX_MEMORY_MIB:
        problems.add(path, f"{value!r} is outside {MIN_MEMORY_MIB} MiB .. {MAX_MEMORY_MIB // (1024 * 1024)} TiB")
        return _BAD
    return mib


def _seconds_in(low: float, high: float) -> Callable:
    def convert(value, path, problems, ctx):
        try:
            seconds = parse_duration(value)
        except ValueError as e:
            problems.add(path, str(e))
            return _BAD
        if not low <= seconds <= high:  # also false for nan; inf is above high
            problems.add(path, f"{value!r} is outside {low:g} s .. {high:g} s")
            return _BAD
        return seconds
    return convert


_seconds = _seconds_in(0.001, MAX_SECONDS)


def _workdir(value, path, problems, ctx):
    """An absolute folder on the remote host, in plain characters, never '/' itself."""
    if value == "":
        return value  # the default: a private per-user folder chosen on the host
    if not isinstance(value, str) or not re.fullmatch(r"/[A-Za-z0-9._/-]{1,200}", value) or \
            any(part in ("", ".", "..") for part in value.strip("/").split("/")) or value.strip("/") == "":
        problems.add(path, f"{value!r} is not an absolute folder path of letters, digits, '.', '_', '-' "
                           "(no '..', not '/')")
        return _BAD
    return value.rstrip("/")


def _choice(*choices: str) -> Callable:
    def convert(value, path, problems, ctx):
        if value not in choices:
            hint = difflib.get_close_matches(str(value), choices, n=1)
            problems.add(path, f"{value!r} is not one of {', '.join(choices)}"
                         + (f" (did you mean {hint[0]!r}?)" if hint else ""))
            return _BAD
        return value
    return convert


def _path_or(*keywords: str, confined: bool = False) -> Callable:
    """A path resolved against the manifest's folder, or one of the given keywords.

    confined: the path must resolve (symlinks followed) inside the manifest's project root, so
    that a manifest cannot publish or overwrite files elsewhere on the machine."""
    def convert(value, path, problems, ctx):
        if not isinstance(value, str) or not value or "\0" in value or len(value) > 1024:
            problems.add(path, f"{value!r} is not a path")
            return _BAD
        if value in keywords:
            return value
        p = Path(os.path.expanduser(value) if not confined else value)
        resolved = (p if p.is_absolute() else ctx["base"] / p).resolve()
        if confined and not is_inside(resolved, ctx["root"]):
            problems.add(path, f"{value!r} resolves to {resolved}, outside the project folder {ctx['root']}; "
                               "keep it inside (or use --results for results elsewhere)")
            return _BAD
        return str(resolved)
    return convert


def _host_file(*keywords: str) -> Callable:
    """A file (or folder) that is handed to a guest: kernels, modules, initramfs, disk images.

    It must resolve (symlinks followed) inside the project, or inside a folder the operator trusts on
    the command line (--trust DIR, or MEMBALLOON_TRUST): a manifest from someone else must not be able
    to boot a guest with the host's files and publish what it reads."""
    def convert(value, path, problems, ctx):
        converted = _path_or(*keywords)(value, path, problems, ctx)
        if converted is _BAD or converted in keywords or not problems.check_files:
            return converted  # build, status, compare read records only: nothing is handed to a guest
        roots = [ctx["root"], *ctx.get("trusted", ())]
        if not any(is_inside(Path(converted), r) for r in roots):
            problems.add(path, f"{value!r} resolves to {converted}, outside the project folder {ctx['root']}; "
                               f"move it inside, or trust its folder with --trust "
                               f"{converted if os.path.isdir(converted) else Path(converted).parent}")
            return _BAD
        return converted
    return convert


def _kernel(value, path, problems, ctx):
    """'host', '<source>:<release>' (fetched, e.g. debian:trixie from Debian's archive), or a path to a
    vmlinuz."""
    if sources.names_a_source(value):
        return value
    why = sources.problem(value)
    if why:
        problems.add(path, why)
        return _BAD
    return _host_file("host")(value, path, problems, ctx)


def _image(value, path, problems, ctx):
    """'', '<source>:<release>' (built here, e.g. debian:bookworm), or a path to a disk image file."""
    if value == "":
        return value
    if sources.names_a_source(value):
        return value
    why = sources.problem(value)
    if why:
        problems.add(path, why)
        return _BAD
    converted = _host_file()(value, path, problems, ctx)
    if converted is not _BAD and not os.path.isfile(converted):
        problems.add(path, f"{value!r}: no such disk image file")
        return _BAD
    return converted


_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"


def valid_host(text: str) -> bool:
    """A DNS name or an IPv4/IPv6 address (bare, as SSH and libvirt take it)."""
    if not isinstance(text, str) or not text or len(text) > 253:
        return False
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    return bool(re.fullmatch(rf"{_LABEL}(?:\.{_LABEL})*\.?", text)) and not text.replace(".", "").isdigit()


def parse_address(text: str) -> tuple[str, int | None]:
    """(host, port or None) of 'name', 'name:port', '192.0.2.1:22', '[2001:db8::1]:2222' or a bare IPv6
    address; a ValueError saying what is wrong otherwise."""
    if not isinstance(text, str):
        raise ValueError("not text")
    port_text = None
    if text.startswith("["):
        m = re.fullmatch(r"\[([^\]]+)\](?::(.*))?", text)
        if not m:
            raise ValueError("an IPv6 address in brackets is written [2001:db8::1] or [2001:db8::1]:22")
        host, port_text = m.group(1), m.group(2)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host = text
    if not valid_host(host):
        raise ValueError(f"{host!r} is not a host name or address")
    if port_text is None:
        return host, None
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def _guest_address(value, path, problems, ctx):
    if value in ("", "forwarded"):
        return value
    try:
        parse_address(value)
        return value
    except ValueError as e:
        problems.add(path, f"{value!r}: {e}; give a host name or address (with an optional :port), or 'forwarded'")
        return _BAD


# Kernel parameters a manifest may not add: they replace the probe's init or the system's root, move
# the console the tool reads, change how a death shows, stop the balloon or hide memory from the
# kernel (so the measurement would not be what the post says it is).
CMDLINE_REFUSED = ("init", "rdinit", "initrd", "initramfs_async", "root", "console", "earlycon", "earlyprintk",
                   "panic", "panic_on_oops", "oops", "loglevel", "quiet", "mem", "memmap", "memblock", "maxcpus",
                   "nr_cpus", "mem_encrypt", "crashkernel", "modprobe.blacklist", "module_blacklist", "rd.break",
                   "memballoon.mode", "memballoon.stable", "memballoon.settle", "memballoon.balloon_kib",
                   "memballoon.hold", "memhp_default_state", "movable_node", "kernelcore", "movablecore",
                   "swiotlb", "log_buf_len", "hugepages", "hugepagesz", "default_hugepagesz", "cma", "numa",
                   "initcall_blacklist", "page_alloc.shuffle", "vmalloc", "nr_cpus", "possible_cpus",
                   "crash_kexec_post_notifiers", "trace_buf_size", "memtest", "transparent_hugepage")


# What a manifest may set is an allow-list (README, "Threat model"): parameters that change neither what
# runs nor the memory the kernel sets aside at boot. Anything else may size what is measured (a hash
# table's entries, the low memory kept, a bounce buffer) without the posts saying so, and is refused.
CMDLINE_ALLOWED = ("init_on_alloc", "init_on_free", "nokaslr", "mitigations", "pti", "nopti", "spectre_v2",
                   "spec_store_bypass_disable", "tsx", "tsc", "clocksource", "no_timer_check", "nowatchdog",
                   "nmi_watchdog", "random.trust_cpu", "random.trust_bootloader", "printk.time", "audit", "apparmor",
                   "selinux", "security", "lsm", "ipv6.disable", "net.ifnames", "biosdevname", "fsck.mode",
                   "rcupdate.rcu_expedited", "workqueue.power_efficient")
CMDLINE_ALLOWED_PREFIXES = ("systemd.",)  # a full system's own services (not rd.*: that is the initramfs)


def _cmdline(value, path, problems, ctx):
    """Extra kernel parameters, one line; none that change what runs or what is measured."""
    value = _line(value, path, problems, ctx)
    if value is _BAD or not value:
        return value
    if not re.fullmatch(r"[\x21-\x7e]+( [\x21-\x7e]+)*", value):
        # the kernel splits on more than ASCII spaces (0xA0 too): a word Python sees whole could be two
        problems.add(path, "kernel parameters are printable ASCII separated by single spaces; remove other "
                           "characters")
        return _BAD
    for word in value.split(" "):
        if word == "--":
            problems.add(path, "'--' hands the rest of the line to init; remove it and what follows")
            return _BAD
        name = word.split("=", 1)[0].replace("-", "_")
        if name in CMDLINE_REFUSED or name.startswith(("memballoon.", "virtio_balloon.", "virtio_mem.")):
            problems.add(path, f"{word!r}: the tool sets {name} itself (it decides what runs as init, where the "
                               "console goes or what is measured); remove it")
            return _BAD
        if '"' in word or "'" in word:
            problems.add(path, f"{word!r}: quotes in kernel parameters are not supported; remove them")
            return _BAD
        if name not in CMDLINE_ALLOWED and not name.startswith(CMDLINE_ALLOWED_PREFIXES):
            problems.add(path, f"{word!r}: not a kernel parameter a manifest may set (it may change what the kernel "
                               f"sets aside, which is what is measured); allowed: {', '.join(CMDLINE_ALLOWED)}, "
                               "systemd.*")
            return _BAD
    return value


def _date(value, path, problems, ctx):
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, str) and len(value) <= 40:
        try:
            _dt.datetime.fromisoformat(value)
            return value
        except ValueError:
            pass
    problems.add(path, f"{value!r} is not a date (write e.g. 2026-11-26 or 2026-11-26T10:00:00+00:00)")
    return _BAD


def _list_of(item: Callable, min_items: int = 0, unique: Callable | None = None, what: str = "") -> Callable:
    """A list of items; with `unique`, two items with the same unique(item) are an error."""
    def convert(value, path, problems, ctx):
        if not isinstance(value, list):
            problems.add(path, f"expected a list, got {type(value).__name__}")
            return _BAD
        if len(value) < min_items:
            problems.add(path, f"needs at least {min_items} item(s)")
            return _BAD
        if len(value) > MAX_LIST_ITEMS:
            problems.add(path, f"has {len(value)} items; at most {MAX_LIST_ITEMS}")
            return _BAD
        out = [item(v, f"{path}[{i}]", problems, ctx) for i, v in enumerate(value)]
        bad = any(v is _BAD for v in out)
        if unique:
            seen: dict = {}
            for i, v in enumerate(out):
                if v is _BAD:
                    continue
                k = unique(v)
                if k in seen:
                    problems.add(f"{path}[{i}]{what}", f"{k!r} is already used by {path}[{seen[k]}]")
                    bad = True
                seen.setdefault(k, i)
        return _BAD if bad else out
    convert.section = getattr(item, "section", None)  # type: ignore[attr-defined]
    return convert


def _section(cls: type) -> Callable:
    def convert(value, path, problems, ctx):
        return _load_section(cls, value, path, problems, ctx)
    convert.section = cls  # type: ignore[attr-defined]  # lets describe_schema walk the tree
    return convert


def opt(convert: Callable, default: Any = _REQUIRED, doc: str = "", convert_default: bool = False) -> Any:
    """Declare one manifest key: its converter, its default (none = required) and what it is for.

    convert_default: pass the default through the converter too (a default path is relative to the
    manifest's folder like a written one)."""
    kw: dict[str, Any] = {"metadata": {"convert": convert, "doc": doc, "required": default is _REQUIRED,
                                       "convert_default": convert_default, "default": default}}
    if default is _REQUIRED:
        kw["default"] = None
    elif isinstance(default, (list, dict)):
        kw["default_factory"] = lambda d=default: type(d)(d)
    else:
        kw["default"] = default
    return field(**kw)


def _load_section(cls: type, raw: Any, path: str, problems: _Problems, ctx: dict) -> Any:
    where = path or "top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.add(path, f"expected a mapping of keys for {where}, got {type(raw).__name__}")
        return _BAD
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    values: dict[str, Any] = {}
    bad = False
    for key in raw:
        if key not in fields:
            hint = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5) or \
                [f for f in fields if f.replace("_", "") == str(key).lower().replace("_", "")]
            keypath = f"{path}.{key}" if path else str(key)
            problems.add(keypath, "unknown key" + (f"; did you mean '{hint[0]}'?" if hint else
                                                    f"; known keys here: {', '.join(fields)}"))
            bad = True
    for name, f in fields.items():
        keypath = f"{path}.{name}" if path else name
        if name not in raw:
            if f.metadata.get("required"):
                problems.add(keypath, f"is required ({f.metadata.get('doc', '')})".replace(" ()", ""))
                bad = True
            elif f.metadata.get("convert_default"):
                values[name] = f.metadata["convert"](f.metadata["default"], keypath, problems, ctx)
            continue
        value = f.metadata["convert"](raw[name], keypath, problems, ctx)
        if value is _BAD:
            bad = True
        else:
            values[name] = value
    if bad:
        return _BAD
    obj = cls(**values)
    check = getattr(obj, "_check", None)
    if check:
        check(path, problems)
    return obj




def _matching(pattern: str, what: str, allow_empty: bool = False) -> Callable:
    """Text that matches `pattern` whole (it reaches a URI, a login or a shell)."""
    def convert(value, path, problems, ctx):
        if allow_empty and value == "":
            return value
        if not isinstance(value, str) or not re.fullmatch(pattern, value):
            problems.add(path, f"{value!r} is not {what}")
            return _BAD
        return value
    return convert


_user = _matching(r"[a-z_][a-z0-9_.-]{0,31}", "a login name (lowercase letters, digits, '_', '.', '-')")


def _hostname(value, path, problems, ctx):
    if value == "" or valid_host(value):
        return value
    problems.add(path, f"{value!r} is not a host name or address (no port: that is ssh.port)")
    return _BAD


def _site_path(value, path, problems, ctx):
    if not isinstance(value, str) or not re.fullmatch(r"/[A-Za-z0-9._~/-]{0,300}", value) or "/../" in value + "/" \
            or value.startswith("//"):  # '//host/x' is another site
        problems.add(path, f"{value!r} is not a site path like /post/old-name/")
        return _BAD
    return value


def _url(value, path, problems, ctx):
    if value == "":
        return value
    if isinstance(value, str) and (_site_path(value, path, _Problems(), ctx) is not _BAD or
                                   re.fullmatch(r"https?://[A-Za-z0-9.-]+(:\d+)?(/[A-Za-z0-9._~/%?&=+#-]*)?", value)):
        return value
    problems.add(path, f"{value!r} is not an http(s) URL or a site path")
    return _BAD


# --- libvirt URIs: only the transports the tool supports and tests ---------------------------------
# A libvirt URI can name a program to run (ext's and ssh's command=, netcat=) or a socket to talk to;
# a manifest may come from someone else, so only these drivers, transports and parameters pass.
URI_DRIVERS = {scheme: h.uri_paths for h in hypervisors.HYPERVISORS for scheme in h.uri_schemes}
URI_TRANSPORTS = ("", "ssh", "libssh", "libssh2", "tls")
URI_PARAMS = {  # name -> pattern of its value (fullmatch); paths are checked separately
    "no_tty": r"[01]", "sshauth": r"(agent|privkey|password|keyboard-interactive)"
    r"(,(agent|privkey|password|keyboard-interactive))*", "known_hosts_verify": r"normal|auto",
    "mode": r"auto|legacy|direct", "proxy": r"auto|native", "keyfile": None, "known_hosts": None, "pkipath": None,
}


def _libvirt_uri(value, path, problems, ctx):
    """'embedded' or a libvirt URI of a supported driver and transport, with known parameters only."""
    value = _line(value, path, problems, ctx)
    if value is _BAD or value == EMBEDDED:
        return value
    try:
        parts = urllib.parse.urlsplit(value) if re.match(r"^[a-z0-9+]+://", value) else None
        if parts is not None:
            parts.port  # noqa: B018 - a malformed host or port raises here, not later
    except ValueError as e:
        problems.add(path, f"{value!r} is not a valid URI ({e})")
        return _BAD
    if parts is None:
        problems.add(path, f"{value!r} is not a libvirt URI or '{EMBEDDED}'")
        return _BAD
    driver, _, transport = parts.scheme.partition("+")
    if driver not in URI_DRIVERS:
        problems.add(path, f"{value!r}: driver {driver!r} is not supported (use {', '.join(URI_DRIVERS)})")
        return _BAD
    if transport not in URI_TRANSPORTS:
        problems.add(path, f"{value!r}: transport {transport!r} is not supported: it runs a program or talks to "
                           f"an arbitrary socket; use one of {', '.join(t for t in URI_TRANSPORTS if t)} "
                           "(or no transport for this machine)")
        return _BAD
    if parts.path not in URI_DRIVERS[driver]:
        problems.add(path, f"{value!r}: path {parts.path!r} is not one of "
                           f"{', '.join(repr(p) for p in URI_DRIVERS[driver] if p)} for {driver}")
        return _BAD
    if parts.fragment:
        problems.add(path, f"{value!r}: a libvirt URI has no '#' part")
        return _BAD
    if ";" in parts.query or "%" in parts.query:
        # libvirt also splits parameters on ';' and decodes %XX: one value could carry another parameter
        problems.add(path, f"{value!r}: ';' and '%' are not allowed in a URI's parameters; separate them with '&' "
                           "and write values plainly")
        return _BAD
    seen: set = set()
    try:
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        problems.add(path, f"{value!r}: its parameters are not name=value pairs")
        return _BAD
    for name, arg in query:
        if name in seen:
            problems.add(path, f"parameter {name!r} is given twice; keep one")
            return _BAD
        seen.add(name)
        if name == "no_verify":
            problems.add(path, "no_verify turns off SSH host key checking; remove it and add the host's key to "
                               "known_hosts (or set ssh.accept_new_host_key: true)")
            return _BAD
        if name not in URI_PARAMS:
            why = {"command": "runs a program", "netcat": "runs a program on the host", "socket": "talks to an "
                   "arbitrary socket", "known_hosts_verify": "turns off host key checking"}.get(name, "is not supported")
            problems.add(path, f"URI parameter {name!r} {why}; remove it (supported: {', '.join(sorted(URI_PARAMS))})")
            return _BAD
        pattern = URI_PARAMS[name]
        if pattern is not None and not re.fullmatch(pattern, arg):
            problems.add(path, f"URI parameter {name}={arg!r} is not allowed here "
                               + ("(host key checking stays on)" if name == "known_hosts_verify" else ""))
            return _BAD
        if pattern is None:
            where = Path(os.path.expanduser(arg))
            if not where.is_absolute():  # libvirt would resolve it against its own working directory
                problems.add(path, f"URI parameter {name}={arg!r} must be an absolute path (or start with ~/)")
                return _BAD
            resolved = where.resolve()
            trusted = [ctx["root"], Path(os.path.expanduser("~/.ssh")).resolve(), *ctx.get("trusted", ())]
            if not arg or not any(is_inside(resolved, t) for t in trusted):
                problems.add(path, f"URI parameter {name}={arg!r} is outside the project and ~/.ssh; keep the file "
                                   "there (or pass --trust DIR)")
                return _BAD
    if transport in ("ssh", "libssh", "libssh2") and not parts.hostname:
        problems.add(path, f"{value!r}: a +{transport} URI needs a host name")
        return _BAD
    return value


# --- the schema ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SSH:
    user: str = opt(_user, "root", "login user on the host")
    port: int = opt(_int_in(1, 65535), 22, "SSH port")
    key: str = opt(_path_or(), "", "private key file; default: your SSH agent and ~/.ssh")
    known_hosts: str = opt(_path_or(confined=True), "",
                           "a known_hosts file (inside the project) checked besides ~/.ssh/known_hosts")
    accept_new_host_key: bool = opt(_flag, False,
                                    "accept and record an unknown host key on first contact, like OpenSSH's "
                                    "StrictHostKeyChecking=accept-new (a changed key is still refused)")


def _mib_in(low: int, high: int) -> Callable:
    def convert(value, path, problems, ctx):
        mib = _mib(value, path, problems, ctx)
        if mib is not _BAD and not low <= mib <= high:
            problems.add(path, f"{value!r} is outside {low} MiB .. {high} MiB")
            return _BAD
        return mib
    return convert


@dataclass(frozen=True)
class Nested:
    """The machine of a nested host (`kind: nested-xen` or `nested-kvm`): QEMU on this machine running Xen
    and a Debian dom0, or a Debian with KVM, QEMU and libvirt."""

    memory: int = opt(_mib_in(2048, 1024 * 1024), 4096,
                          "RAM of the QEMU machine that runs the nested host (its guests live in it)")
    dom0_memory: int = opt(_mib_in(512, 16384), 1024, "nested-xen: dom0's fixed memory (Xen's dom0_mem)")
    cpus: int = opt(_int_in(1, 64), 1, "CPUs of the QEMU machine, taken from this machine's slots")
    suite: str = opt(_choice("bookworm"), "bookworm", "Debian suite of the nested host (Xen 4.17, QEMU 7.2)")
    boot_timeout: float = opt(_seconds_in(10, 3600), 300.0, "how long the nested host may take to come up")

    def _check(self, path, problems):
        if self.dom0_memory + 1024 > self.memory:
            problems.add(f"{path}.memory", f"{self.memory} MiB leaves less than 1 GiB for guests beside a "
                                           f"{self.dom0_memory} MiB dom0; raise it")


@dataclass(frozen=True)
class Host:
    name: str = opt(_name, doc="short name used in result paths and graphs")
    kind: str = opt(_choice("libvirt", *NESTED_KINDS), "libvirt",
                    "libvirt: a hypervisor reached through `uri`; nested-xen / nested-kvm: a Xen or KVM host the "
                    "tool builds and boots itself in QEMU (TCG) on this machine, then measures over SSH")
    nested: Nested = opt(_section(Nested), Nested(), "the nested host's machine (kind: nested-xen, nested-kvm)")
    uri: str = opt(_libvirt_uri, EMBEDDED, "libvirt URI: 'embedded' (libvirt's QEMU driver in this process), "
                                     "qemu:///system, qemu:///session, qemu+ssh://user@host/system, xen+ssh://…")
    address: str = opt(_hostname, "", "SSH address of a remote host (default: the host part of the URI)")
    domain_type: str = opt(_choice("auto", *[t for h in hypervisors.HYPERVISORS for t in h.domain_types]), "auto",
                           "kvm, qemu (TCG), xen, or auto: KVM where a canary boot works, else TCG")
    slots: int = opt(_slots, 0, "points measured at once; 'auto' = bounded by the host's cores and memory")
    memory_backing: str = opt(_choice("auto", "default", "memfd"), "auto",
                              "guest RAM: default (private, committed by QEMU up front), memfd (shared, committed "
                              "page by page: a guest larger than the host can start), or auto: memfd for points "
                              "larger than the host can commit, default otherwise")
    ssh: SSH = opt(_section(SSH), SSH(), "how to reach a remote host")
    workdir: str = opt(_workdir, "", "folder on a remote host for the probe's kernel, initramfs and consoles; "
                                     "default: /var/lib/memballoon for root, ~/.cache/memballoon for others")
    sweep: dict = opt(lambda *a: _guest_sweep(*a), {},
                      "only these values of some factors on this host, e.g. {memory: [1 GiB, 32 GiB]} for a slow "
                      "host; each a subset of the manifest's sweep (default: every value)")
    repeats: int = opt(_int_in(0, 100), 0, "measure each point this many times on this host, at most the "
                                           "manifest's sweep.repeats (0: as many); for a slow host")
    guest_cmdline: str = opt(_cmdline, "", "extra kernel parameters for every guest on this host, after the "
                                           "guest's own (the same allow-list as a guest's cmdline), e.g. "
                                           "init_on_alloc=0 where zeroing pages the balloon takes is slow; "
                                           "records name them")

    @property
    def is_nested(self) -> bool:
        return self.kind in NESTED_KINDS

    @property
    def nested_domain_type(self) -> str:
        """The domain type a nested host runs ('xen', 'kvm'); '' for other hosts."""
        return NESTED_KINDS.get(self.kind, "")

    @property
    def is_embedded(self) -> bool:
        return self.uri == EMBEDDED and not self.is_nested

    @property
    def is_remote(self) -> bool:
        return self.is_nested or bool(self.ssh_address)

    @property
    def hypervisor(self) -> hypervisors.Hypervisor:
        """What runs the host's guests (hypervisors/): claimed by its kind, domain type or URI."""
        return hypervisors.for_host(self.uri, self.kind, self.domain_type)

    @property
    def ssh_address(self) -> str:
        if self.address:
            return self.address
        if not re.match(r"^[a-z0-9]+\+(ssh|libssh|libssh2)://", self.uri):
            return ""
        try:
            return urllib.parse.urlsplit(self.uri).hostname or ""
        except ValueError:
            return ""

    def _check(self, path, problems):
        if self.is_nested:
            for key, value, default in (("uri", self.uri, EMBEDDED), ("address", self.address, ""),
                                        ("workdir", self.workdir, "")):
                if value != default:
                    problems.add(f"{path}.{key}", f"a {self.kind} host is started by the tool, which sets its own "
                                                  f"{key}; remove the key")
            hv = self.hypervisor
            if self.domain_type not in ("auto", self.nested_domain_type):
                problems.add(f"{path}.domain_type", f"a {self.kind} host runs {hv.title}: use "
                                                    f"{' or '.join(repr(t) for t in hv.domain_types)} or 'auto'")
            return
        if self.is_remote and not valid_host(self.ssh_address):
            problems.add(f"{path}.address", f"{self.ssh_address!r} is not a host name or address")
        by_uri = hypervisors.for_host(self.uri)
        if self.domain_type != "auto" and hypervisors.for_domain_type(self.domain_type) is not by_uri:
            wanted = hypervisors.for_domain_type(self.domain_type)
            problems.add(f"{path}.domain_type", f"{self.domain_type} needs a {' or '.join(wanted.uri_schemes)}:// "
                                                f"URI (this one reaches {by_uri.title})")


@dataclass(frozen=True)
class Guest:
    name: str = opt(_name, doc="short name used in result paths and graph file names")
    label: str = opt(_line, "", "how the post names it, e.g. 'Debian 12'; default: from the kernel")
    kernel: str = opt(_kernel, "host",
                      "'host' (this machine's installed kernel), 'debian:<suite>' (that Debian release's "
                      "kernel, fetched into the cache), or a path to a vmlinuz")
    modules: str = opt(_host_file(), "", "the kernel's modules folder (default: /lib/modules/<release>)")
    vcpus: int = opt(_int_in(1, 64), 1, "virtual CPUs")
    boot: str = opt(_choice("auto", "pvh", "bzimage"), "auto",
                    "how QEMU starts the kernel: pvh (the uncompressed vmlinux through its PVH entry, fastest), "
                    "bzimage (firmware and the compressed kernel), or auto: pvh where the kernel has the entry")
    cmdline: str = opt(_cmdline, "", "extra kernel command line (parameters that change what runs as init, where "
                                     "the console goes or what memory the kernel sees are refused)")
    image: str = opt(_image, "", "a full system instead of the probe: 'debian:<suite>' (a small Debian the tool "
                                 "builds from Debian's packages) or a qcow2/raw disk image; read through the "
                                 "QEMU guest agent")
    format: str = opt(_choice("auto", "qcow2", "raw"), "auto",
                      "with image: <path>, its format; auto: from the name (.qcow2; .raw or .img). Never probed")
    backing: list = opt(_list_of(_host_file()), [], "with a qcow2 image: the backing and data files it may name "
                                                    "(inside the project); any other is refused")
    initrd: str = opt(_host_file(), "", "with image: <path> and kernel: <path>, the initramfs to boot them with "
                                      "(default for a path image: its own boot loader, through the firmware)")
    hosts: list = opt(_list_of(_name), [], "only on these hosts (default: every host of the manifest)")
    sweep: dict = opt(lambda *a: _guest_sweep(*a), {},
                      "only these values of some factors for this guest, e.g. {memory: [2 GiB, 4 GiB]}; each a "
                      "subset of the manifest's sweep (default: every value)")
    reading: str = opt(_choice("agent", "console", "ssh"), "agent",
                       "how a full system is read: agent (the QEMU guest agent), console (the image runs "
                       "guest/memballoon-report at boot and prints between markers on its serial console), or "
                       "ssh (commands over SSH to `address`)")
    address: str = opt(_guest_address, "", "with reading: ssh, the guest's address as its host reaches it "
                                           "(name or name:port), or 'forwarded': a loopback port of this machine "
                                           "forwarded to the guest's port 22 (local host, image: debian:<suite>)")
    ssh: SSH = opt(_section(SSH), SSH(), "with reading: ssh and an address: how to log in to the guest")

    @property
    def is_system(self) -> bool:
        return bool(self.image)

    @property
    def kernel_file(self) -> bool:
        """Whether `kernel` is a file the user gives (not 'host', not a distribution's release)."""
        return self.kernel != "host" and not sources.names_a_source(self.kernel)

    @property
    def has_image_file(self) -> bool:
        return bool(self.image) and not sources.names_a_source(self.image)

    def image_format(self) -> str:
        """The image file's format: as declared, or from its name; a UserError if it cannot be told."""
        from .guests.diskimage import format_for

        fmt, problem = format_for(self.image, self.format)
        if fmt is None:
            raise UserError(f"guest {self.name}: image {self.image}: {problem}")
        return fmt

    def check_image(self) -> str:
        """'' if the image file may be booted, else why not (its format, its backing chain, its size)."""
        from .guests.diskimage import format_for, inspect

        fmt, problem = format_for(self.image, self.format)
        return problem if fmt is None else inspect(self.image, fmt, self.backing)

    def _check(self, path, problems):
        self._check_reading(path, problems)
        if problems.check_files:
            self._check_files(path, problems)

    def _check_files(self, path, problems):
        """What the sweep will boot exists and may be booted (validate, sweep and report check it)."""
        if self.has_image_file:
            why = self.check_image()
            if why:
                problems.add(f"{path}.image", f"{self.image}: {why}")
        if self.kernel_file and not os.path.isfile(self.kernel):
            hint = difflib.get_close_matches(Path(self.kernel).name, ["host"], n=1, cutoff=0.5)
            problems.add(f"{path}.kernel", f"{self.kernel}: no such kernel file; use 'host' (this machine's kernel), "
                                           "'debian:<suite>' or the path of a vmlinuz"
                                           + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        for key, spec in (("kernel", self.kernel), ("image", self.image)):
            named = sources.parse(spec)
            if named:
                source, release = named
                why = source.release_problem(release, Path(os.environ.get("MEMBALLOON_CACHE", ".cache")).resolve())
                if why:
                    problems.add(f"{path}.{key}", why)
        if self.modules and not os.path.isdir(self.modules):
            problems.add(f"{path}.modules", f"{self.modules}: no such folder; give the kernel's modules folder "
                                            "(the one holding modules.dep or kernel/)")
        if self.initrd and not os.path.isfile(self.initrd):
            problems.add(f"{path}.initrd", f"{self.initrd}: no such initramfs file")

    def _check_reading(self, path, problems):
        if not self.has_image_file and (self.format != "auto" or self.backing):
            problems.add(f"{path}.{'format' if self.format != 'auto' else 'backing'}", "goes with image: <path>")
        if self.reading == "ssh" and not self.address:
            problems.add(f"{path}.address", "reading: ssh needs the guest's address (or 'forwarded')")
        if self.address and self.reading != "ssh":
            problems.add(f"{path}.address", "goes with reading: ssh")
        if self.address == "forwarded" and not sources.names_a_source(self.image):
            problems.add(f"{path}.address", "'forwarded' works with image: debian:<suite>, whose keys the tool "
                                            "made; for your own image give the guest's address")
        if self.reading != "agent" and not self.image:
            problems.add(f"{path}.reading", "is for full systems (image:); the probe always reports on its console")
        if self.initrd and not (self.image and self.kernel_file):
            problems.add(f"{path}.initrd", "goes with image: <path> and kernel: <path to a vmlinuz>")


@dataclass(frozen=True)
class Balloon:
    model: str = opt(_choice("auto", *dict.fromkeys(b for h in hypervisors.HYPERVISORS for b in h.balloons)), "auto",
                     "the balloon: virtio (QEMU/KVM), xen (Xen's own), none, or auto: the host's kind")
    stats_period: float = opt(_seconds_in(1, 3600), 1.0, "seconds between the balloon's statistics updates")


def _guest_sweep(value, path, problems, ctx):
    """A guest's narrower sweep: {factor's sweep key: values}, converted as the manifest's sweep is."""
    if not isinstance(value, dict):
        problems.add(path, f"expected a mapping of factor keys (e.g. memory: [2 GiB]), got {type(value).__name__}")
        return _BAD
    by_key = {f.sweep: f for f in FACTORS}
    out, bad = {}, False
    for key, values in value.items():
        f = by_key.get(key)
        if f is None:
            hint = difflib.get_close_matches(str(key), list(by_key), n=1, cutoff=0.5)
            problems.add(f"{path}.{key}", "not a factor" + (f"; did you mean '{hint[0]}'?" if hint else
                                                             f"; factors: {', '.join(by_key)}"))
            bad = True
            continue
        converted = f.convert(values, f"{path}.{key}", problems, ctx)
        if converted is _BAD:
            bad = True
        else:
            out[f.name] = tuple(converted)
    return _BAD if bad else out


# --- the sweep's factors, declared once ---------------------------------------------------------------
# A point is a host, a guest, one value of every factor, and a repeat. Everything else follows from
# this list: the manifest's sweep keys, the plan's cross product, point keys and record paths, the
# fields a record must carry, how records are grouped into series and named in posts. A factor's
# default value is left out of keys and paths (so adding a factor keeps every existing record where
# it is) and is what a record written before the factor existed is migrated to.
@dataclass(frozen=True)
class Factor:
    name: str                     # the record's field and the Point's attribute
    sweep: str                    # its key under sweep: in a manifest
    convert: Callable             # converter of one value
    kind: type                    # int, str or bool: what a record holds
    default: Any                  # not swept: this value; None = required
    key: Callable[[Any], str]     # its part of a point key, e.g. 'm4096'
    path: Callable[[Any], str]    # its part of a record's file name, e.g. 'memory-4096MiB'
    label: Callable[[Any], str]   # how posts and tables name a value
    doc: str
    axis: bool = False            # the x axis of the graphs (memory)

    def shown(self, value) -> bool:
        """Whether the value appears in keys, paths and series names (defaults do not)."""
        return self.default is None or value != self.default


def _on_off(name: str) -> Callable:
    return lambda v: name if v else f"no-{name}"


FACTORS: list[Factor] = [
    Factor("memory_mib", "memory", _list_of(_mib, 1, unique=lambda v: v), int, None,
           lambda v: f"m{v}", lambda v: f"memory-{v}MiB", lambda v: f"memory {v} MiB",
           "list of <memory> sizes (the maximum), e.g. [1 GiB, 2 GiB]", axis=True),
    Factor("current_memory_mib", "current_memory", _list_of(_mib, 1, unique=lambda v: v), int, None,
           lambda v: f"c{v}", lambda v: f"current-{v}MiB", lambda v: f"currentMemory {v} MiB",
           "list of <currentMemory> sizes, e.g. [1024 MiB]"),
    Factor("memory_model", "memory_model", _list_of(_choice("balloon", "virtio-mem", "dimm"), 1, unique=lambda v: v),
           str, "balloon", lambda v: v, lambda v: f"model-{v}", lambda v: v,
           "how memory above currentMemory is given: balloon (boot with memory, balloon down to currentMemory), "
           "virtio-mem (boot with currentMemory, a virtio-mem device up to memory), dimm (boot with currentMemory, "
           "DIMM slots up to memory)"),
    Factor("autodeflate", "autodeflate", _list_of(_flag, 1, unique=lambda v: v), bool, False,
           _on_off("autodeflate"), _on_off("autodeflate"), lambda v: "autodeflate" if v else "no autodeflate",
           "the balloon gives memory back when the guest runs out (virtio deflate-on-OOM): [false], [true] or both"),
    Factor("free_page_reporting", "free_page_reporting", _list_of(_flag, 1, unique=lambda v: v), bool, False,
           _on_off("fpr"), _on_off("fpr"), lambda v: "free page reporting" if v else "no free page reporting",
           "the guest reports free pages to the host (virtio free page reporting)"),
    Factor("cpu_model", "cpu_model", _list_of(_choice("default", "maximum"), 1, unique=lambda v: v), str, "default",
           lambda v: f"cpu-{v}", lambda v: f"cpu-{v}", lambda v: "CPU model maximum" if v == "maximum" else
           "libvirt's default CPU model",
           "the guest's CPU model: default (libvirt's, no <cpu> element) or maximum (<cpu mode='maximum'/>: "
           "everything the accelerator offers, host-passthrough on KVM, QEMU's max on TCG)"),
]


def at_defaults(record, *, but=("memory_mib", "current_memory_mib")) -> bool:
    """Whether a record's factors other than `but` are all at their defaults (a plain configuration):
    the one definition every curve, law and prediction selects its records by."""
    for f in FACTORS:
        if f.name in but or f.default is None:
            continue
        value = record.get(f.name)
        if (f.default if value is None else value) != f.default:
            return False
    return True


def factor(name: str) -> Factor:
    return next(f for f in FACTORS if f.name == name)


def _sweep_check(self, path, problems):
    if min(self.current_memory) > max(self.memory):
        problems.add(f"{path}.current_memory", "every current_memory is above every memory; no point to measure")


def sweep_schema(factors: list[Factor]) -> type:
    """The manifest's sweep: section, one list per factor, and the repeats."""
    fields = [(f.sweep, list, opt(f.convert, doc=f.doc) if f.default is None else opt(f.convert, [f.default], f.doc))
              for f in factors]
    fields.append(("repeats", int, opt(_int_in(1, MAX_REPEATS), 1, "how many times each point is measured")))
    cls = dataclasses.make_dataclass("Sweep", fields, frozen=True, namespace={"_check": _sweep_check})
    cls.__module__ = __name__
    return cls


Sweep = sweep_schema(FACTORS)


def add_factor(new: Factor) -> None:
    """Declare one more factor (for extensions and tests): the sweep schema is made again from the list."""
    global Sweep
    FACTORS.append(new)
    Sweep = sweep_schema(FACTORS)


def _sweep_section(value, path, problems, ctx):
    return _load_section(Sweep, value, path, problems, ctx)


@dataclass(frozen=True)
class Timeouts:
    boot: float = opt(_seconds, 180.0, "until the guest's init reports (kernel booted)")
    settle: float = opt(_seconds, 600.0, "until MemTotal stops changing after the balloon driver loads")
    stable: float = opt(_seconds, 4.0, "how long MemTotal must stay unchanged to count as settled")
    canary: float = opt(_seconds, 60.0, "the KVM canary boot of domain_type auto")


@dataclass(frozen=True)
class Post:
    slug: str = opt(_name, doc="the post's folder name under site/content/posts/")
    title: str = opt(_line, doc="the post's title")
    content: str = opt(_path_or(confined=True), "",
                       "the Markdown+Jinja source of the prose, relative to this file (inside the project); "
                       "default: templates/default-post.md.j2 (summary, graphs, table, provenance)")
    date: str = opt(_date, "", "publication date; default: the newest result's date")
    description: str = opt(_text, "", "one-sentence summary for the front matter")
    categories: list = opt(_list_of(_line), [], "Hugo categories")
    tags: list = opt(_list_of(_line), [], "Hugo tags")
    aliases: list = opt(_list_of(_site_path), [], "old URLs (site paths like /post/old/) that redirect to this post")
    menu: str = opt(_line, "", "Hugo menu to list the post in")
    layout: str = opt(_choice("bundle", "static"), "bundle",
                      "bundle: images beside index.md; static: images under static/img/ like the original")
    original: str = opt(_url, "", "URL (http, https or a site path) of the post this one updates")

    def _check(self, path, problems):
        if self.content and not os.path.isfile(self.content):
            problems.add(f"{path}.content", f"{self.content}: no such file; write the post's prose there (Markdown, "
                                            "see content/ for examples) or point post.content at it")


@dataclass(frozen=True)
class Manifest:
    experiment: str = opt(_name, doc="the experiment's name")
    description: str = opt(_text, "", "what the experiment asks")
    hosts: list = opt(_list_of(_section(Host), 1, unique=lambda h: h.name, what=".name"), doc="hypervisor hosts")
    guests: list = opt(_list_of(_section(Guest), 1, unique=lambda g: g.name, what=".name"), doc="guests to boot")
    balloon: Balloon = opt(_section(Balloon), Balloon(), "the balloon device")
    sweep: Any = opt(_sweep_section, doc="the values of every factor (memory, current_memory, …) and the repeats")
    timeouts: Timeouts = opt(_section(Timeouts), Timeouts(), "per-point time limits")
    results: str = opt(_path_or(confined=True), "results",
                       "where the JSON records go, relative to this file (inside the project)", convert_default=True)
    post: Post = opt(_section(Post), doc="what the report looks like")
    # Filled by load(), not by the YAML.
    path: str = field(default="", init=True, metadata={"internal": True})
    sha256: str = field(default="", init=True, metadata={"internal": True})

    def _check_narrower(self, path: str, narrower: dict, problems) -> None:
        """A host's or guest's `sweep` only narrows the manifest's: every value must be in it."""
        for f in FACTORS:
            extra = [v for v in narrower.get(f.name, ()) if v not in getattr(self.sweep, f.sweep)]
            if extra:
                problems.add(f"{path}.sweep.{f.sweep}",
                             f"{', '.join(f.label(v) for v in extra)} not in sweep.{f.sweep} "
                             f"({', '.join(f.label(v) for v in getattr(self.sweep, f.sweep))}); "
                             f"{'a host' if path.startswith('hosts') else 'a guest'}'s values "
                             f"narrow the manifest's sweep: add them there too")

    def _check(self, path, problems):
        if sum(1 for h in self.hosts if h.is_embedded) > 1:
            problems.add("hosts", f"only one host can use uri '{EMBEDDED}'")
        planned = len(self.hosts) * len(self.guests) * self.sweep.repeats
        for f in FACTORS:
            planned *= len(getattr(self.sweep, f.sweep))
        if planned > MAX_POINTS:
            problems.add("sweep", f"asks for {planned} points (hosts x guests x every factor's values x repeats); "
                                  f"at most {MAX_POINTS} in one manifest")
        by_hv: dict = {}
        for h in self.hosts:
            by_hv.setdefault(h.hypervisor.name, (h.hypervisor, []))[1].append(h.name)
        for hv, names in by_hv.values():  # each hypervisor says which balloons and factor values it supports
            runs = f"host(s) {', '.join(names)} run {hv.title}"
            if self.balloon.model != "auto" and self.balloon.model not in hv.balloons:
                problems.add("balloon.model", f"{self.balloon.model!r} is not {hv.title}'s balloon, and {runs}; use "
                                              f"{hv.balloon!r} or 'auto' (or a separate manifest)")
            for f in FACTORS:
                bad = [v for v in getattr(self.sweep, f.sweep) if not hv.supports(f.name, v)]
                if bad:
                    problems.add(f"sweep.{f.sweep}", f"{', '.join(f.label(v) for v in bad)}: {runs}, which supports "
                                                     f"only {', '.join(f.label(v) for v in hv.factors[f.name])}; "
                                                     "leave it out (or use a separate manifest for those hosts)")
        for i, h in enumerate(self.hosts):
            self._check_narrower(f"hosts[{i}]", h.sweep, problems)
        names = {h.name for h in self.hosts}
        for i, g in enumerate(self.guests):
            for h in g.hosts:
                if h not in names:
                    hint = difflib.get_close_matches(h, sorted(names), n=1)
                    problems.add(f"guests[{i}].hosts", f"{h!r} is not a host of this manifest (its hosts: "
                                                       f"{', '.join(sorted(names))})"
                                                       + (f"; did you mean {hint[0]!r}?" if hint else ""))
            self._check_narrower(f"guests[{i}]", g.sweep, problems)
            on = [h for h in self.hosts if not g.hosts or h.name in g.hosts]
            if g.address == "forwarded" and any(h.is_remote for h in on):
                problems.add(f"guests[{i}].address", "'forwarded' is a port of this machine: list only local hosts "
                                                     f"in guests[{i}].hosts, or give the guest's address")
            cannot = [h.name for h in on if not h.hypervisor.system_guests]
            if g.is_system and cannot:
                problems.add(f"guests[{i}].image", f"full-system guests cannot run on host(s) {', '.join(cannot)} "
                                                   f"(their hypervisor boots probes only); list the others in "
                                                   f"guests[{i}].hosts")

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def balloon_model(self, host: Host) -> str:
        """The balloon a guest on `host` gets: as written, or for 'auto' the hypervisor's own."""
        if self.balloon.model != "auto":
            return self.balloon.model
        return host.hypervisor.balloon

    def guest(self, name: str) -> Guest:
        return next(g for g in self.guests if g.name == name)


def project_root(manifest_path: Path) -> Path:
    """The folder a manifest's paths must stay in: the project of `<project>/experiments/<name>/x.yaml`
    (or `<project>/experiments/x.yaml`), else the manifest's own folder."""
    folder = manifest_path.resolve().parent
    for candidate in (folder, folder.parent):
        if candidate.name == "experiments":
            return candidate.parent
    return folder


def _yaml_problem(mark, message: str) -> str:
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{message}"


def _check_nodes(root, loader) -> list[str]:
    """Bound the document after alias expansion, refuse duplicate keys and impossible dates."""
    problems: list[str] = []
    sizes: dict[int, int] = {}
    stack = [(root, False)]
    while stack:  # iterative post-order walk; `sizes` memoizes shared (aliased) nodes
        node, done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[id(node)] = 1
            if node.tag == "tag:yaml.org,2002:timestamp":
                try:
                    loader.construct_yaml_timestamp(node)
                except ValueError as e:
                    problems.append(_yaml_problem(node.start_mark, f"{node.value!r} is not a valid date ({e})"))
            continue
        children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else node.value
        if not done:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        sizes[id(node)] = min(1 + sum(sizes.get(id(c), 1) for c in children), MAX_YAML_NODES + 1)
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key, _value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        problems.append(_yaml_problem(key.start_mark, f"duplicate key {key.value!r} (first at line "
                                                                      f"{seen[key.value] + 1}); keep one"))
                    seen.setdefault(key.value, key.start_mark.line)
        if sizes[id(node)] > MAX_YAML_NODES:
            return [f"the document expands to more than {MAX_YAML_NODES} values (through YAML aliases?); "
                    "write it out plainly"]
    return problems


def parse_yaml(data: bytes, path: str) -> Any:
    """Safe YAML with bounds: at most MAX_MANIFEST_BYTES, MAX_YAML_NODES values after alias expansion,
    no duplicate keys. Every failure is a ManifestError naming the line."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(path, [f"the manifest is {len(data)} bytes; at most {MAX_MANIFEST_BYTES}"])
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(data)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        problems = _check_nodes(node, loader)
        if problems:
            raise ManifestError(path, problems)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        reason = getattr(e, "problem", None) or str(e).splitlines()[0]
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ManifestError(path, [f"not valid YAML at{where}: {reason}"]) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        raise ManifestError(path, [f"not valid YAML: {type(e).__name__}: {e}"]) from None
    finally:
        loader.dispose()


def trusted_dirs(extra: list[str] | tuple = ()) -> tuple[Path, ...]:
    """Folders outside the project whose files manifests may hand to guests: `extra` (--trust DIR)
    and MEMBALLOON_TRUST (folders separated by ':'). Both are the operator's, never a manifest's."""
    named = [*extra, *[p for p in os.environ.get("MEMBALLOON_TRUST", "").split(os.pathsep) if p]]
    out = []
    for name in named:
        folder = Path(os.path.expanduser(name)).resolve()
        if not folder.is_dir():
            raise UserError(f"--trust {name}: not a folder; name a folder of kernels or images")
        if folder == Path("/"):
            raise UserError(f"--trust {name}: trusting / would let any manifest hand any file to a guest; "
                            "name the folder of your kernels or images")
        out.append(folder)
    return tuple(out)


def load(path: str | Path, trusted: tuple = (), check_files: bool = True) -> Manifest:
    """Read and validate a manifest; raise ManifestError with every problem found.

    trusted: folders outside the project whose kernels, modules and images guests may boot.
    check_files: check what a sweep would boot (validate, sweep, report); publishing from records
    (build, status, compare) needs none of those files on this machine."""
    path = Path(path)
    data = read_regular(path, MAX_MANIFEST_BYTES, "manifest")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError(str(path), [f"not UTF-8 text (byte {e.start})"]) from None
    raw = parse_yaml(data, str(path))
    problems = _Problems()
    problems.check_files = check_files
    if not isinstance(raw, dict):
        raise ManifestError(str(path), ["expected a mapping of keys at the top level"])
    ctx = {"base": path.resolve().parent, "root": project_root(path),
           "trusted": (tuple(trusted) or trusted_dirs()) if check_files else tuple(trusted)}
    manifest = _load_section(Manifest, raw, "", problems, ctx)
    if problems or manifest is _BAD:
        raise ManifestError(str(path), list(problems) or ["invalid"])
    return dataclasses.replace(manifest, path=str(path), sha256=hashlib.sha256(data).hexdigest())


def find_manifests(root: str | Path) -> list[Path]:
    """Every manifest under experiments/: <name>/experiment.yaml or a top-level *.yaml."""
    root = Path(root)
    found = sorted(root.glob("*/experiment.yaml")) + sorted(root.glob("*.yaml")) + sorted(root.glob("*.yml"))
    return found


def describe_schema() -> str:
    """The schema as text, for 'validate --schema' and the README."""
    lines: list[str] = []

    def walk(cls: type, indent: str) -> None:
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            req = " (required)" if f.metadata.get("required") else ""
            lines.append(f"{indent}{f.name}{req}: {f.metadata.get('doc', '')}")
            convert = f.metadata.get("convert")
            inner = Sweep if convert is _sweep_section else getattr(convert, "section", None)
            if inner:
                walk(inner, indent + "  ")
    walk(Manifest, "")
    return "\n".join(lines)


def host_from_uri(uri: str, name: str, trusted: tuple = ()) -> Host:
    """A host given as a libvirt URI on the command line (audit), checked as a manifest's host is:
    the same drivers, transports and parameters, the SSH user and port from the URI."""
    raw: dict[str, Any] = {"name": name, "uri": uri}
    try:
        parts = urllib.parse.urlsplit(uri)
        if "+" in parts.scheme and parts.hostname:
            raw["ssh"] = {"user": parts.username or "root", **({"port": parts.port} if parts.port else {})}
            key = dict(urllib.parse.parse_qsl(parts.query)).get("keyfile")
            if key:
                raw["ssh"]["key"] = key
    except ValueError:
        pass  # the URI's own check says what is wrong with it
    problems = _Problems()
    problems.check_files = True
    ctx = {"base": Path.cwd(), "root": project_root(Path.cwd() / "x"), "trusted": tuple(trusted) or trusted_dirs()}
    host = _load_section(Host, raw, "", problems, ctx)
    if problems or host is _BAD:
        raise UserError(f"{uri}: " + "; ".join(p.removeprefix("uri: ") for p in problems) if problems else
                        f"{uri}: not a usable libvirt URI")
    return host
