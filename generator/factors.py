"""The sweep's factors, declared once: a point is a host, a guest, one value of every factor, and a
repeat. Everything else follows from FACTORS: the manifest's sweep keys, the plan's cross product,
point keys and record paths, the fields a record must carry, how records are grouped into series and
named in posts, and which records are the plain configuration (`at_defaults`)."""

from dataclasses import dataclass, field
from typing import Any, Callable



from .converters import _choice, _flag, _list_of, _mib, _mib_or_nothing


# --- the sweep's factors, declared once ---------------------------------------------------------------
# A point is a host, a guest, one value of every factor, and a repeat. Everything else follows from
# this list: the manifest's sweep keys, the plan's cross product, point keys and record paths, the
# fields a record must carry, how records are grouped into series and named in posts. A factor's
# default value is left out of keys and paths (so adding a factor keeps every existing record where
# it is) and is what a record written before the factor existed is migrated to.
@dataclass(frozen=True, kw_only=True)
class Factor:
    """One factor of the sweep. Its value's word in keys and paths is `words[value]` (else the value),
    put into `key_format` and `path_format`; how posts name a value is `labels[value]`, else
    `label_format` with the value."""

    name: str                     # the record's field and the Point's attribute
    convert: Callable             # converter of one value (the manifest's list of them is built around it)
    kind: type                    # int, str or bool: what a record holds
    doc: str                      # what the manifest's sweep key means
    sweep: str = ""               # its key under sweep: in a manifest (default: its name)
    default: Any = None           # not swept: this value; None = required
    key_format: str = "{}"        # its part of a point key, e.g. 'm{}' -> 'm4096'
    path_format: str = "{}"       # its part of a record's file name, e.g. 'memory-{}MiB'
    label_format: str = "{}"      # how posts name a value, e.g. 'memory {} MiB'
    words: dict = field(default_factory=dict)    # value -> its word in keys and paths (booleans)
    labels: dict = field(default_factory=dict)   # value -> how posts name it, where the format will not do
    axis: bool = False            # the x axis of the graphs (memory)

    def __post_init__(self):
        if not self.sweep:
            object.__setattr__(self, "sweep", self.name)

    @property
    def required(self) -> bool:
        """A factor every manifest must sweep (it has no default)."""
        return self.default is None

    def key(self, value) -> str:
        return self.key_format.format(self.words.get(value, value))

    def path(self, value) -> str:
        return self.path_format.format(self.words.get(value, value))

    def label(self, value) -> str:
        return self.labels.get(value) or self.label_format.format(value)

    def is_default(self, value) -> bool:
        return not self.required and value == self.default

    def shown(self, value) -> bool:
        """Whether the value appears in keys, paths and series names (defaults do not)."""
        return not self.is_default(value)

    def applies_to(self, hypervisor, value) -> bool:
        """Whether a hypervisor can run a point with this value (Hypervisor.factors)."""
        return hypervisor.supports(self.name, value)


def _on_off(word: str, label: str) -> dict:
    """A boolean factor's words (keys, paths) and labels: 'fpr' / 'no-fpr'."""
    return {"words": {True: word, False: f"no-{word}"}, "labels": {True: label, False: f"no {label}"}}


def _values(convert: Callable) -> Callable:
    """A sweep key's converter: a non-empty list of distinct values, each converted by `convert`."""
    return _list_of(convert, 1, unique=lambda v: v)


FACTORS: list[Factor] = [
    Factor(name="memory_mib", sweep="memory", convert=_values(_mib), kind=int, axis=True,
           key_format="m{}", path_format="memory-{}MiB", label_format="memory {} MiB",
           doc="list of <memory> sizes (the maximum), e.g. [1 GiB, 2 GiB]"),
    Factor(name="current_memory_mib", sweep="current_memory", convert=_values(_mib), kind=int,
           key_format="c{}", path_format="current-{}MiB", label_format="currentMemory {} MiB",
           doc="list of <currentMemory> sizes, e.g. [1024 MiB]"),
    Factor(name="memory_model", convert=_values(_choice("balloon", "virtio-mem", "dimm")), kind=str,
           default="balloon", path_format="model-{}",
           doc="how memory above currentMemory is given: balloon (boot with memory, balloon down to currentMemory), "
               "virtio-mem (boot with currentMemory, a virtio-mem device up to memory), dimm (boot with "
               "currentMemory, DIMM slots up to memory)"),
    Factor(name="autodeflate", convert=_values(_flag), kind=bool, default=False,
           **_on_off("autodeflate", "autodeflate"),
           doc="the balloon gives memory back when the guest runs out (virtio deflate-on-OOM): [false], [true] or "
               "both"),
    Factor(name="free_page_reporting", convert=_values(_flag), kind=bool, default=False,
           **_on_off("fpr", "free page reporting"),
           doc="the guest reports free pages to the host (virtio free page reporting)"),
    Factor(name="cpu_model", convert=_values(_choice("default", "maximum")), kind=str, default="default",
           key_format="cpu-{}", path_format="cpu-{}",
           labels={"maximum": "CPU model maximum", "default": "libvirt's default CPU model"},
           doc="the guest's CPU model: default (libvirt's, no <cpu> element) or maximum (<cpu mode='maximum'/>: "
               "everything the accelerator offers, host-passthrough on KVM, QEMU's max on TCG)"),
    Factor(name="plugged_mib", sweep="plugged", convert=_values(_mib_or_nothing), kind=int, default=0,
           key_format="p{}", path_format="plugged-{}MiB", label_format="{} MiB plugged", labels={0: "nothing plugged"},
           doc="memory plugged into a running virtio-mem or dimm guest once it has reported, and unplugged again "
               "(plugging.py): [0] (nothing, the default) or sizes, e.g. [1 GiB, 4 GiB]; points where it does not "
               "fit above currentMemory, or whose guest is ballooned, are not planned"),
]


def at_defaults(record, *, but=("memory_mib", "current_memory_mib")) -> bool:
    """Whether a record's factors other than `but` are all at their defaults (a plain configuration):
    the one definition every curve, law and prediction selects its records by."""
    for f in FACTORS:
        if f.name in but or f.required:
            continue
        value = record.get(f.name)
        if (f.default if value is None else value) != f.default:
            return False
    return True


def factor(name: str) -> Factor:
    return next(f for f in FACTORS if f.name == name)
