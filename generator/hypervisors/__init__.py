"""The hypervisors the tool measures on, and how the rest of the tool finds the one it needs.

Adding one: a module with a `Hypervisor` subclass (see `base.py`) and its line in HYPERVISORS."""
from __future__ import annotations

from ..domain import DomainSpec
from .base import Hypervisor
from .qemu import QEMU
from .xen import Xen

HYPERVISORS: tuple[Hypervisor, ...] = (QEMU(), Xen())
DEFAULT = HYPERVISORS[0]  # a URI no other one claims is QEMU's, as is a record that names no domain type


class Unknown(Hypervisor):
    """A domain type no registered hypervisor runs ('lxc', 'vbox', a record from elsewhere): named as
    such, with no curves, no balloon and no domain the tool could write for it."""

    name = "unknown"
    title = "unknown hypervisor"
    inflates_after_boot = False
    linear_loss = False
    memblock_debug = False
    no_guest_stats = "no hypervisor the tool knows runs this domain type"

    def render(self, spec: DomainSpec) -> str:
        raise ValueError(f"domain type {spec.domain_type!r}: no registered hypervisor runs it")


UNKNOWN = Unknown()


def for_domain_type(domain_type: str | None) -> Hypervisor:
    """The hypervisor that runs `<domain type=…>` ('qemu', 'kvm', 'xen'); QEMU for a record that names
    none (records before domain types were kept, all QEMU's); UNKNOWN for a type nobody registered."""
    if not domain_type:
        return DEFAULT
    return next((h for h in HYPERVISORS if domain_type in h.domain_types), UNKNOWN)


def domain_type_of(recorded: str | None) -> str:
    """A record's domain type; one that names none is the default hypervisor's emulated one (records
    from before domain types were kept were all QEMU's, under TCG)."""
    return recorded or next(iter(DEFAULT.emulated_twin.values()), DEFAULT.domain_types[0])


def known(domain_type: str) -> Hypervisor | None:
    """The hypervisor that runs `<domain type=…>`, or None where no registered one does."""
    return next((h for h in HYPERVISORS if domain_type in h.domain_types), None)


def for_host(uri: str, kind: str = "libvirt", domain_type: str = "auto") -> Hypervisor:
    """The hypervisor of a manifest's host: the first that claims its kind, its domain type or its
    URI's driver; QEMU for everything no other one claims."""
    scheme = uri.partition("://")[0].partition("+")[0] if "://" in uri else ""
    for h in HYPERVISORS:
        if h is not DEFAULT and (kind in h.host_kinds or domain_type in h.domain_types or scheme in h.uri_schemes):
            return h
    return DEFAULT


def for_facts(hv_type: str, uri: str) -> Hypervisor:
    """The hypervisor a connected host turned out to run (libvirt's getType(), e.g. 'QEMU', 'Xen')."""
    by_type = next((h for h in HYPERVISORS if hv_type.lower() == h.name), None)
    return by_type or for_host(uri)


def rank(domain_type: str) -> tuple:
    """Where a domain type stands among the registered ones (hypervisors in HYPERVISORS' order, each
    one's domain types in its own order: KVM, QEMU (TCG), Xen), for tables and graphs; others last."""
    order = [t for h in HYPERVISORS for t in h.domain_types]
    return (order.index(domain_type) if domain_type in order else len(order), domain_type)


def label(domain_type: str) -> str:
    """How posts name a domain type: 'KVM', 'QEMU (TCG)', 'Xen'."""
    return for_domain_type(domain_type).label(domain_type)


def render(spec: DomainSpec) -> str:
    """The domain XML of a spec, by the hypervisor of its domain type."""
    return for_domain_type(spec.domain_type).render(spec)


def domain_xml(**fields) -> str:
    """render(DomainSpec(**fields)): for tests and tools that build a domain by hand."""
    return render(DomainSpec(**fields))


__all__ = ["HYPERVISORS", "UNKNOWN", "Hypervisor", "DomainSpec", "for_domain_type", "known", "for_host", "for_facts",
           "rank", "label", "render",
           "domain_xml"]
