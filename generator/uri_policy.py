"""Which libvirt URIs a manifest may name: only the drivers, transports and parameters the tool
supports and tests. A libvirt URI can name a program to run (ext's and ssh's command=, netcat=) or a
socket to talk to; a manifest may come from someone else, so everything else is refused by name."""

import os
import re
import urllib.parse
from pathlib import Path


from . import hypervisors
from .safe import is_inside

from .converters import _BAD, EMBEDDED, _line


# a manifest may come from someone else, so only these drivers, transports and parameters pass.


def uri_drivers() -> dict[str, tuple]:
    """libvirt URI driver -> the paths it may have: those of the registered hypervisors (asked when a
    manifest is read, so a hypervisor added to the registry is accepted without another edit)."""
    return {scheme: h.uri_paths for h in hypervisors.HYPERVISORS for scheme in h.uri_schemes}

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
    drivers = uri_drivers()
    if driver not in drivers:
        problems.add(path, f"{value!r}: driver {driver!r} is not supported (use {', '.join(drivers)})")
        return _BAD
    if transport not in URI_TRANSPORTS:
        problems.add(path, f"{value!r}: transport {transport!r} is not supported: it runs a program or talks to "
                           f"an arbitrary socket; use one of {', '.join(t for t in URI_TRANSPORTS if t)} "
                           "(or no transport for this machine)")
        return _BAD
    if parts.path not in drivers[driver]:
        problems.add(path, f"{value!r}: path {parts.path!r} is not one of "
                           f"{', '.join(repr(p) for p in drivers[driver] if p)} for {driver}")
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
