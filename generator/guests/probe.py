"""The probe guest: a kernel plus an initramfs built here, in Python, with no disk image.

The initramfs is one static busybox, the virtio balloon driver and the modules it needs, and an
init script that reports MemTotal at boot, loads the balloon driver, waits until MemTotal has
stopped changing, prints ``free -m`` and ``/proc/meminfo`` between markers on the serial console
and powers off. It is cached by the content hash of everything that goes into it.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import platform
import re
import shutil
import stat
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

from .. import __version__

from . import sources
from ..errors import UserError

MARK = "@@MEMBALLOON"
PROBE_FORMAT = 7  # bump when the init script or layout changes in a way that matters

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")

# Module names as modules.dep writes them; the closure and order come from modules.dep.
VIRTIO_MODULES = ("virtio_pci", "virtio_balloon")
BALLOON_MODULES = {"virtio": VIRTIO_MODULES}  # balloon model -> the kernel modules its driver needs in the probe
OPTIONAL_MODULES = ("virtio_mem",)  # loaded where the kernel has it (Linux 5.8 and later)

INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
M=@@MEMBALLOON
say() { echo "$M $*"; }
param() { sed -n "s/.*memballoon\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
memtotal() { sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo; }
memfree() { sed -n 's/^MemFree: *\([0-9]*\) kB/\1/p' /proc/meminfo; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
MODE=$(param mode); STABLE=$(param stable); SETTLE=$(param settle); TARGET=$(param balloon_kib)
HOLD=$(param hold)
say "init $(uptime_s)"
say "kernel $(uname -r)"
say "boot-memtotal-kib $(memtotal)"
if [ "$MODE" = canary ]; then say "canary-ok"; poweroff -f; fi
# What the kernel set aside at boot, line by line (memblock=debug on the command line), and the page
# allocator's reserves, before the balloon moves anything. Bounded: a flood is not read further.
say "begin memblock"; dmesg | grep -E 'memblock_(alloc|reserve|phys_alloc|phys_free|free|remove)|Memory: [0-9]+K/|Freeing|BIOS-e820|e820: (update|remove)|Xen: \[mem|xen_memory_setup|Released [0-9]+ page|Remapped [0-9]+ page|p2m' | head -n 6000
# The kernel image's extent: /proc/iomem's Kernel code and bss (a few lines); /proc/kallsyms (about 2 s
# under TCG) only where iomem does not name them.
K=$(grep -E '^ *[0-9a-f]+-[0-9a-f]+ : Kernel (code|bss)$' /proc/iomem | head -n 4 | sed 's/^ */iomem /')
if echo "$K" | grep -q 'Kernel code$' && echo "$K" | grep -q 'Kernel bss$'; then echo "$K"; else
grep -E ' (_text|_stext|_etext|__start_rodata|__end_rodata|_sdata|_edata|__init_begin|__init_end|__bss_start|__bss_stop|_end|__end_of_kernel_reserve|__brk_base|_brk_start|_brk_end|__brk_limit)$' /proc/kallsyms | head -n 40 | sed 's/^/kallsyms /'
fi
say "end memblock"
say "begin zoneinfo"
grep -E '^Node|^ +(pages free|min|low|high|spanned|present|managed) +[0-9]|^ +protection:' /proc/zoneinfo
for f in min_free_kbytes watermark_scale_factor watermark_boost_factor lowmem_reserve_ratio; do
  echo "sysctl $f $(cat /proc/sys/vm/$f 2>/dev/null)"
done
say "end zoneinfo"
for mod in $(cat /etc/probe-modules); do
  insmod "/lib/modules/probe/$mod.ko" || say "insmod-failed $mod"
done
say "balloon-loaded $(uptime_s)"
# The balloon's size in KiB: pages inflated minus pages deflated (exact event counters, any balloon
# driver, also with deflate-on-OOM where MemTotal does not move), else what MemTotal lost.
boot=$(memtotal)
balloon() {
  b=$(awk '/^balloon_inflate /{i=$2} /^balloon_deflate /{d=$2} END{if (i != "") print (i - d) * 4}' /proc/vmstat)
  if [ -n "$b" ]; then echo "$b"; else echo $((boot - $(memtotal))); fi
}
# Xen's balloon (built into the kernel): settled when its current size equals the target the
# toolstack set. A PV guest starts with currentMemory populated, so that is usually at once.
XEN=/sys/devices/system/xen_memory/xen_memory0
xen_settled() { [ ! -d "$XEN" ] || [ "$(cat "$XEN/target_kb")" = "$(cat "$XEN/info/current_kb")" ]; }
# Done when the balloon holds its target and nothing changed for one sample (0.2 s). Guards: a
# balloon that makes no progress (no new largest size for STABLE s: stuck, or inflating and
# deflating again as autodeflate does when the guest runs short), and the settle timeout.
TARGET=${TARGET:-0}; tick=200000; per_s=5
last_mt=$(memtotal); last_b=$(balloon); best=$last_b; quiet=0; n=0; limit=$(( ${SETTLE:-600} * per_s ))
started=""; end=""
while [ "$n" -lt "$limit" ]; do
  usleep $tick; n=$((n + 1)); mt=$(memtotal); b=$(balloon); changed=0
  if [ "$mt" != "$last_mt" ] || [ "$b" != "$last_b" ]; then
    now=$(uptime_s); [ -z "$started" ] && { started=$now; say "inflate-start $now"; }
    end=$now; last_mt=$mt; last_b=$b; changed=1
  fi
  if [ "$b" -gt "$best" ]; then best=$b; quiet=0; else quiet=$((quiet + 1)); fi
  if [ "$changed" = 0 ] && [ "$b" -ge "$TARGET" ] && xen_settled; then break; fi
  if [ "$quiet" -ge $(( ${STABLE:-4} * per_s )) ]; then say "balloon-short $b $TARGET"; break; fi
done
[ -n "$end" ] && say "inflate-end $end"
say "balloon-kib $(balloon)"
if [ "$n" -lt "$limit" ]; then say "settled $(uptime_s)"; else say "settle-timeout $(uptime_s)"; fi
say "settled-memtotal-kib $(memtotal)"
say "begin free"; free -m; say "end free"
say "begin meminfo"; cat /proc/meminfo; say "end meminfo"
if [ -d "$XEN" ]; then
  say "begin xen-balloon"
  for f in target_kb info/current_kb info/low_kb info/high_kb; do echo "$f $(cat "$XEN/$f" 2>/dev/null)"; done
  say "end xen-balloon"
fi
say "begin dmesg"; dmesg | grep -E 'Memory:|swiotlb|software IO TLB|crashkernel|Out of memory|virtio_balloon|e820: BIOS-e820|Xen: \[mem|xen:balloon|p2m virtual area|Released [0-9]+ page|Remapped [0-9]+ page|Hypervisor detected|Booting paravirtualized kernel'; say "end dmesg"
say "done $(uptime_s)"
# Until the host ends the guest: report MemTotal (and MemFree) whenever it changes (memory plugged or unplugged).
n=0; last=$(memtotal)
say "memtotal-now $last $(memfree) $(uptime_s)"  # where the changes start from
while [ "$n" -lt $(( ${HOLD:-30} * 5 )) ]; do
  usleep 200000; n=$((n + 1)); now=$(memtotal)
  if [ "$now" != "$last" ]; then say "memtotal-now $now $(memfree) $(uptime_s)"; last=$now; fi
done
poweroff -f
"""


@dataclass(frozen=True)
class Probe:
    """A built probe guest: where its files are and what went into them."""

    kernel: Path
    initrd: Path
    release: str
    modules: tuple[str, ...]
    sha256: str
    vmlinux: Path | None = None  # the uncompressed kernel, when it has a PVH entry point

    def boot_image(self, boot: str) -> tuple[Path, str]:
        """(image to boot, boot method) for a guest's `boot` setting: pvh, bzimage, or auto (pvh if possible)."""
        if boot == "bzimage" or (boot == "auto" and self.vmlinux is None):
            return self.kernel, "bzimage"
        if self.vmlinux is None:
            raise UserError(f"guest kernel {self.release}: boot 'pvh' asked for, but the kernel has no PVH "
                            "entry point (an ELF note XEN_ELFNOTE_PHYS32_ENTRY); use boot: bzimage")
        return self.vmlinux, "pvh"


def kernel_release(image: Path) -> str:
    """The release string a bzImage carries in its setup header (e.g. '6.1.0-26-amd64')."""
    try:
        with open(image, "rb") as f:
            head = f.read(0x4000)
            if head[0x202:0x206] != b"HdrS":
                raise UserError(f"{image}: not a Linux bzImage kernel (no 'HdrS' header)")
            (ptr,) = struct.unpack_from("<H", head, 0x20E)
            f.seek(ptr + 0x200)
            raw = f.read(256)
    except OSError as e:
        raise UserError(f"{image}: cannot read the kernel image ({e.strerror})") from None
    return raw.split(b" ", 1)[0].split(b"\0", 1)[0].decode("ascii", "replace")


def extract_vmlinux(image: bytes) -> bytes | None:
    """The uncompressed kernel (ELF) inside a bzImage, or None if no payload decompresses to one.

    The payload's format is found by its magic (XZ for Debian, also gzip and zstd); the first one
    that decompresses to an ELF image wins."""
    magics = [(b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b\x08", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd")]
    for magic, kind in magics:
        start = image.find(magic)
        while start != -1:
            data = image[start:]
            try:
                if kind == "xz":
                    out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
                elif kind == "gzip":
                    out = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
                else:
                    import zstandard  # type: ignore
                    out = zstandard.ZstdDecompressor().decompressobj().decompress(data)
            except Exception:  # noqa: BLE001 - a magic inside other data: try the next one
                out = b""
            if out[:4] == b"\x7fELF":
                return out
            start = image.find(magic, start + 1)
    return None


def has_pvh_entry(elf: bytes) -> bool:
    """True if the ELF kernel carries Xen's PHYS32_ENTRY note: QEMU can then boot it through PVH."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _flags, offset = struct.unpack_from("<IIQ", elf, phoff + i * phentsize)
        filesz, = struct.unpack_from("<Q", elf, phoff + i * phentsize + 0x20)
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = offset, offset + filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == 18:  # XEN_ELFNOTE_PHYS32_ENTRY
                return True
            pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return False


def _version_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def find_host_kernel() -> Path:
    """This machine's kernel: the running one if its image is in /boot, else the newest installed."""
    running = Path("/boot") / f"vmlinuz-{platform.release()}"
    if running.exists():
        return running
    images = sorted(Path("/boot").glob("vmlinuz-*"), key=lambda p: _version_key(p.name))
    if not images:
        raise UserError("guest kernel 'host': no /boot/vmlinuz-* on this machine; run 'make deps' "
                        "(installs Debian's linux-image-amd64) or set guests[].kernel to a vmlinuz path")
    return images[-1]


def find_busybox() -> Path:
    for candidate in BUSYBOX_CANDIDATES:
        p = Path(candidate)
        if p.exists():
            if _elf_interpreter(p):
                raise UserError(f"{p} is dynamically linked; the probe needs a static busybox "
                                "(apt-get install busybox-static)")
            return p
    raise UserError("no busybox found; install Debian's busybox-static (make deps)")


def _elf_interpreter(path: Path) -> bool:
    """True if the ELF file asks for a dynamic loader (PT_INTERP)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return any(struct.unpack_from("<I", table, i * phentsize)[0] == 3 for i in range(phnum))


def modinfo(data: bytes) -> dict[str, str]:
    """The key=value pairs of a module's .modinfo ELF section (depends=, vermagic=, …); {} for a file
    that is not a well-formed 64-bit ELF object."""
    try:
        return _modinfo(data)
    except (struct.error, IndexError, ValueError, OverflowError, MemoryError):
        return {}


def _modinfo(data: bytes) -> dict[str, str]:
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return {}
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, offset, size

    _, str_off, _ = section(shstrndx)
    for i in range(shnum):
        name, offset, size = section(i)
        if data[str_off + name: str_off + name + 9] == b".modinfo\0":
            pairs = (item.split(b"=", 1) for item in data[offset:offset + size].split(b"\0") if b"=" in item)
            return {k.decode(): v.decode(errors="replace") for k, v in pairs}
    return {}


def _deps_from_modinfo(modules_dir: Path) -> dict[str, tuple[str, list[str]]]:
    """modules.dep's content, rebuilt from each module's own 'depends=' (Debian's packages ship no
    modules.dep: depmod writes it at install time). Only the virtio modules are read."""
    files = {}
    for folder, _dirs, names in os.walk(modules_dir):  # does not descend into symlinked folders
        for name in names:
            if re.search(r"\.ko(\.(xz|zst|gz))?$", name) and not os.path.islink(os.path.join(folder, name)):
                files[_mod_name(name)] = Path(folder) / name
    deps: dict[str, tuple[str, list[str]]] = {}

    def add(name: str) -> None:
        if name in deps or name not in files:
            return
        needs = [d for d in modinfo(read_module(files[name])).get("depends", "").split(",") if d]
        deps[name] = (str(files[name].relative_to(modules_dir)), [_mod_name(d) for d in needs])
        for d in needs:
            add(_mod_name(d))

    for name in files:
        if name.startswith("virtio"):
            add(name)
    return deps


def module_closure(modules_dir: Path, wanted: tuple[str, ...]) -> list[tuple[str, Path]]:
    """Modules to insmod, dependencies first, as (name, file); built-in ones are left out."""
    dep_file = modules_dir / "modules.dep"
    if not modules_dir.is_dir():
        raise UserError(f"{modules_dir}: missing; the guest kernel's modules are not installed "
                        "(set guests[].modules to the kernel's modules folder)")
    builtin = set()
    builtin_file = modules_dir / "modules.builtin"
    if builtin_file.exists():
        builtin = {_mod_name(line) for line in _read_list(builtin_file).split()}
    deps: dict[str, tuple[str, list[str]]] = {}
    if dep_file.exists():
        for line in _read_list(dep_file).splitlines():
            if ":" not in line:
                continue
            target, rest = line.split(":", 1)
            deps[_mod_name(target)] = (target, [_mod_name(d) for d in rest.split()])
    else:
        deps = _deps_from_modinfo(modules_dir)
    order: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        if name in builtin:
            return
        if name not in deps:
            raise UserError(f"{modules_dir}: the kernel has no module {name!r} and it is not built in; "
                            "this kernel cannot run the virtio balloon probe")
        target, needs = deps[name]
        for dep in reversed(needs):  # modules.dep lists the closest dependency first
            visit(dep)
        order.append((name, module_file(modules_dir, target)))

    for name in wanted:
        visit(name)
    return order


def _read_list(path: Path) -> str:
    """modules.dep or modules.builtin: a regular file of bounded size (never a FIFO), as text."""
    from ..safe import read_regular

    return read_regular(path, 16 * 1024 * 1024, path.name).decode("utf-8", errors="replace")


def module_file(modules_dir: Path, target: str) -> Path:
    """The file modules.dep names, only if it is a regular file inside the modules folder (no absolute
    path, no '..', no symlink on the way): the folder may come with a manifest, and whatever is
    packed here goes into the guest's initramfs."""
    rel = Path(target)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts or not re.search(r"\.ko(\.(xz|zst|gz))?$", rel.name):
        raise UserError(f"{modules_dir}: modules.dep names {target!r}, which is not a module file inside the folder; "
                        "run depmod for this kernel or fix the file")
    here = modules_dir
    for i, part in enumerate(rel.parts):
        here = here / part
        try:
            st = os.lstat(here)
        except OSError:
            raise UserError(f"{modules_dir}: {target} is missing; the kernel's modules are incomplete") from None
        if stat.S_ISLNK(st.st_mode) or (i < len(rel.parts) - 1 and not stat.S_ISDIR(st.st_mode)) or \
                (i == len(rel.parts) - 1 and not stat.S_ISREG(st.st_mode)):
            raise UserError(f"{modules_dir}: {target} is not a regular file inside the folder (a symlink or "
                            "something else on the way); only the folder's own module files go into a guest")
    return here


def check_module(path: Path, data: bytes) -> bytes:
    """A kernel module is an ELF object with a .modinfo section; anything else stays out of the guest."""
    if not data.startswith(b"\x7fELF") or not modinfo(data):
        raise UserError(f"{path}: not a kernel module (no ELF .modinfo); only kernel modules go into a guest")
    return data


def _mod_name(path: str) -> str:
    base = os.path.basename(path)
    base = re.sub(r"\.ko(\.(xz|zst|gz))?$", "", base)
    return base.replace("-", "_")


MAX_MODULE_BYTES = 64 * 1024 * 1024  # a kernel module is KiB to a few MiB; a bomb stops here


def read_module(path: Path) -> bytes:
    """A module's bytes, decompressed: Debian 13 ships .ko.xz, others .ko.zst or .ko.gz. A regular
    file of bounded size, decompressed to at most MAX_MODULE_BYTES (the folder may come with a manifest)."""
    from ..safe import read_regular

    data = read_regular(path, MAX_MODULE_BYTES, "kernel module")
    if path.suffix in (".xz", ".gz"):
        d = lzma.LZMADecompressor() if path.suffix == ".xz" else zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out = d.decompress(data, MAX_MODULE_BYTES + 1) if path.suffix == ".xz" else \
                d.decompress(data, MAX_MODULE_BYTES + 1)
        except (lzma.LZMAError, zlib.error, EOFError) as e:
            raise UserError(f"{path}: not a readable compressed module ({e})") from None
        if len(out) > MAX_MODULE_BYTES:
            raise UserError(f"{path}: decompresses to more than {MAX_MODULE_BYTES} bytes; not a kernel module")
        return out
    if path.suffix == ".zst":
        try:
            import zstandard  # type: ignore
            return zstandard.ZstdDecompressor().decompressobj().decompress(data)
        except ImportError:
            if shutil.which("zstd"):
                return subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout
            raise UserError(f"{path}: zstd-compressed module; install 'zstandard' (pip) or 'zstd' (apt)") from None
    return data


# --- newc cpio, written by hand: fixed times, owners and inode numbers so the bytes are reproducible --
def _cpio_entry(out: io.BytesIO, ino: int, name: str, mode: int, data: bytes = b"") -> None:
    encoded = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
    out.write(b"070701" + b"".join(b"%08X" % v for v in fields))
    out.write(encoded)
    out.write(b"\0" * ((-(110 + len(encoded))) % 4))
    out.write(data)
    out.write(b"\0" * ((-len(data)) % 4))


def build_cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc archive of (name, mode, data); directories have mode 0o040755 and no data."""
    out = io.BytesIO()
    for ino, (name, mode, data) in enumerate(entries, start=1):
        _cpio_entry(out, ino, name, mode, data)
    _cpio_entry(out, 0, "TRAILER!!!", 0)
    out.write(b"\0" * ((-out.tell()) % 512))
    return out.getvalue()


def initramfs(busybox: bytes, modules: list[tuple[str, bytes]]) -> bytes:
    """The probe's initramfs, gzip-compressed with a fixed header so equal inputs give equal bytes."""
    d, x, r = 0o040755, 0o100755, 0o100644
    entries: list[tuple[str, int, bytes]] = [
        ("bin", d, b""), ("dev", d, b""), ("etc", d, b""), ("lib", d, b""), ("lib/modules", d, b""),
        ("lib/modules/probe", d, b""), ("proc", d, b""), ("sys", d, b""), ("tmp", d, b""),
        ("bin/busybox", x, busybox),
        ("init", x, INIT_SCRIPT.encode()),
        ("etc/probe-modules", r, ("\n".join(name for name, _ in modules) + "\n").encode()),
    ]
    entries += [(f"lib/modules/probe/{name}.ko", r, data) for name, data in modules]
    raw = build_cpio(entries)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6, filename="") as gz:
        gz.write(raw)
    # zero padding to a whole page (the kernel skips zeros between archives): the initramfs then ends
    # where a page does, however the boot loader places it
    buf.write(b"\0" * ((-buf.tell()) % 4096))
    return buf.getvalue()


def resolve_kernel(kernel: str, modules_dir: str, cache_dir: Path) -> tuple[Path, Path, str]:
    """(kernel image, modules folder, release) for a guest's kernel setting."""
    fetched_modules = None
    if kernel == "host":
        image = find_host_kernel()
    elif sources.parse(kernel):
        source, release = sources.parse(kernel)
        image, fetched_modules = source.fetch_kernel(release, cache_dir)
    else:
        image = Path(kernel)
    if not image.exists():
        raise UserError(f"guest kernel {str(image)!r} does not exist")
    release = kernel_release(image)
    mods = Path(modules_dir) if modules_dir else fetched_modules or Path("/lib/modules") / release
    return image, mods, release


def build(kernel: str, modules_dir: str, cache_dir: Path, balloon_model: str = "virtio") -> Probe:
    """Build (or reuse from the cache) the probe for a kernel; returns where its files are."""
    image, mods_dir, release = resolve_kernel(kernel, modules_dir, cache_dir)
    wanted = BALLOON_MODULES.get(balloon_model, ())
    closure = module_closure(mods_dir, wanted) if wanted else []
    if wanted:
        for optional in OPTIONAL_MODULES:
            try:
                closure += [m for m in module_closure(mods_dir, (optional,)) if m not in closure]
            except UserError:
                pass  # this kernel has no such module: the points that need it say so
    busybox_path = find_busybox()
    h = hashlib.sha256()
    h.update(f"probe-format:{PROBE_FORMAT}\n".encode())
    h.update(INIT_SCRIPT.encode())
    kernel_bytes = image.read_bytes()
    busybox = busybox_path.read_bytes()
    modules = [(name, check_module(path, read_module(path))) for name, path in closure]
    for blob in [kernel_bytes, busybox] + [m for _, m in modules]:
        h.update(hashlib.sha256(blob).digest())
    digest = h.hexdigest()
    folder = cache_dir / "probe" / digest[:16]
    info_path = folder / "probe.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        vmlinux = folder / "vmlinux" if info.get("pvh") else None
        return Probe(folder / "vmlinuz", folder / "initrd.img", info["release"], tuple(info["modules"]), digest,
                     vmlinux)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "vmlinuz").write_bytes(kernel_bytes)
    (tmp / "initrd.img").write_bytes(initramfs(busybox, modules))
    elf = extract_vmlinux(kernel_bytes)
    pvh = bool(elf) and has_pvh_entry(elf)
    if pvh:
        (tmp / "vmlinux").write_bytes(elf)
    info = {"release": release, "modules": [n for n, _ in modules], "kernel_source": str(image),
            "busybox": str(busybox_path), "sha256": digest, "tool_version": __version__, "pvh": pvh}
    (tmp / "probe.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return Probe(folder / "vmlinuz", folder / "initrd.img", release, tuple(info["modules"]), digest,
                 folder / "vmlinux" if pvh else None)
