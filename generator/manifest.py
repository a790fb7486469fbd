"""Experiment manifests: YAML validated against one schema declared here.

The schema is the dataclasses below. Each field carries its converter and a docstring in its
metadata; `_load_section` walks them generically, so a key is declared exactly once. Every problem
is collected with its key path (``sweep.memory[3]``) and reported together; unknown keys are
rejected with the closest known key as a hint.

What the schema is built from lives beside it: the converters (converters.py), the libvirt URIs a
manifest may name (uri_policy.py) and the sweep's factors (factors.py).
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
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
from .safe import read_regular

from .converters import (  # noqa: F401 - the schema's building blocks, also read as manifest.X
    NAME_RE, EMBEDDED, NESTED_KINDS, MAX_MANIFEST_BYTES, MAX_YAML_NODES, MAX_LIST_ITEMS, MAX_POINTS,
    MAX_REPEATS, MAX_TEXT, MAX_MEMORY_MIB, MIN_MEMORY_MIB, MAX_SECONDS, _Problems, _BAD, _REQUIRED, _name,
    _CONTROL_RE, _text, _line, _int_in, _flag, _slots, _mib, _seconds_in, _seconds, _workdir, _choice, _path_or,
    _host_file, _kernel, _image, _LABEL, valid_host, parse_address, _guest_address, CMDLINE_REFUSED,
    CMDLINE_ALLOWED, CMDLINE_ALLOWED_PREFIXES, _cmdline, _date, _list_of, _section, opt, _load_section,
    _matching, _user, _hostname, _site_path, _url,
)
from .uri_policy import (  # noqa: F401 - the schema's building blocks, also read as manifest.X
    uri_drivers, URI_TRANSPORTS, URI_PARAMS, _libvirt_uri,
)
from .factors import (  # noqa: F401 - the schema's building blocks, also read as manifest.X
    Factor, _on_off, _values, FACTORS, at_defaults, factor,
)


def _domain_type(value, path, problems, ctx):
    """'auto' or a domain type a registered hypervisor runs (asked when the manifest is read)."""
    return _choice("auto", *[t for h in hypervisors.HYPERVISORS for t in h.domain_types])(value, path, problems, ctx)


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
    domain_type: str = opt(_domain_type, "auto",
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


def _sweep_check(self, path, problems):
    if min(self.current_memory) > max(self.memory):
        problems.add(f"{path}.current_memory", "every current_memory is above every memory; no point to measure")


def sweep_schema(factors: list[Factor]) -> type:
    """The manifest's sweep: section, one list per factor, and the repeats."""
    fields = [(f.sweep, list, opt(f.convert, doc=f.doc) if f.required else opt(f.convert, [f.default], f.doc))
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
    """The schema as text, for 'validate --schema' and docs/manifests.md."""
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
