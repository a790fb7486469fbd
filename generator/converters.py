"""The manifest's converters: each takes (value, key path, problems, context) and returns the value
converted, or _BAD with the problem added under its key path; and the generic machinery that walks a
schema dataclass with them (`opt` declares a key, `_load_section` loads one section). The bounds on
what a manifest may ask for live here too: a manifest may come from someone else."""

import dataclasses
import datetime as _dt
import difflib
import ipaddress
import os
import re
from dataclasses import field
from pathlib import Path
from typing import Any, Callable


from .guests import sources
from .safe import is_inside
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


def _parsed(parse: Callable, value, path, problems):
    """parse(value) (a size, a duration), or _BAD with the parser's own words under the key's path."""
    try:
        return parse(value)
    except ValueError as e:
        problems.add(path, str(e))
        return _BAD


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
    size = _parsed(parse_size, value, path, problems)
    if size is _BAD:
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


def _mib_or_nothing(value, path, problems, ctx):
    """A size as _mib takes it, or 0 (nothing)."""
    if value == 0 or value == "0":
        return 0
    return _mib(value, path, problems, ctx)


def _seconds_in(low: float, high: float) -> Callable:
    def convert(value, path, problems, ctx):
        seconds = _parsed(parse_duration, value, path, problems)
        if seconds is _BAD:
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


def _named_source(value, path, problems):
    """A value that names a source's release ('debian:trixie'): the value; one that looks like it but is
    wrong: _BAD with why; anything else (a file): None."""
    if sources.names_a_source(value):
        return value
    why = sources.problem(value)
    if why:
        problems.add(path, why)
        return _BAD
    return None


def _kernel(value, path, problems, ctx):
    """'host', '<source>:<release>' (fetched, e.g. debian:trixie from Debian's archive), or a path to a
    vmlinuz."""
    named = _named_source(value, path, problems)
    return _host_file("host")(value, path, problems, ctx) if named is None else named


def _image(value, path, problems, ctx):
    """'', '<source>:<release>' (built here, e.g. debian:bookworm), or a path to a disk image file."""
    if value == "":
        return value
    named = _named_source(value, path, problems)
    if named is not None:
        return named
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


# What a manifest may set is an allow-list (docs/security.md, "Threat model"): parameters that change neither what
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
