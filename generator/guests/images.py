"""Bootable Debian disk images, built here from Debian's packages with mmdebstrap.

A `Recipe` says what goes into an image: a suite, packages, files to write and shell commands to
run inside it. The image is built once and cached under the hash of its recipe (``images/<name>-
<hash>/``): an ext4 disk made with ``mkfs.ext4 -d`` (nothing is mounted), the files the commands
put in ``/memballoon-export/`` moved out next to it (a kernel to boot, a key), and ``image.json``
with the recipe and every package's version. Used for the nested Xen host's dom0; any other image
the project needs is one more recipe.

A build works in a private folder in the cache and renames it into place only when complete, so an
interrupted build leaves nothing that looks finished; a lock keeps two runs from building at once.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from . import kernels
from ..errors import UserError
from ..safe import open_nofollow, private_dir

IMAGE_FORMAT = 1          # bump when the way images are made changes what they contain
EXPORT = "memballoon-export"  # folder in the image whose files are moved next to the disk
BUILD_TIMEOUT = 1800      # seconds for mmdebstrap (a slow mirror); a stuck build fails, it does not hang


# Building blocks of recipes (shell run inside the image, and files), shared by every image that needs them.
SMALL_INITRAMFS = r"""
# a small initramfs: only what finds the root disk (boots faster under emulation)
sed -i 's/^MODULES=.*/MODULES=list/' /etc/initramfs-tools/initramfs.conf
printf 'virtio_pci\nvirtio_blk\next4\n' >> /etc/initramfs-tools/modules
update-initramfs -u -k all >/dev/null
"""
# sshd with one host key and one client key, both made when the image is built; the client key and the
# host key's public half leave the image (exported), so the tool can log in and verify the machine.
SSH_KEYS = r"""
rm -f /etc/ssh/ssh_host_*
ssh-keygen -q -t ed25519 -N '' -C memballoon -f /etc/ssh/ssh_host_ed25519_key
cp /etc/ssh/ssh_host_ed25519_key.pub /memballoon-export/host_key.pub
ssh-keygen -q -t ed25519 -N '' -C memballoon -f /memballoon-export/client_key
install -d -m 0700 /root/.ssh
install -m 0600 /memballoon-export/client_key.pub /root/.ssh/authorized_keys
"""
SSHD_CONFIG = ("/etc/ssh/sshd_config.d/memballoon.conf", 0o644,
               "# written by memballoon: keys only, the one host key the tool knows\n"
               "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
               "HostKey /etc/ssh/ssh_host_ed25519_key\n")


@dataclass(frozen=True)
class Recipe:
    """What an image is made of. Everything here goes into its hash, so a change makes a new image."""

    name: str                                   # e.g. 'xen-dom0'; part of the cache folder's name
    suite: str                                  # Debian suite, e.g. 'bookworm'
    packages: tuple[str, ...]                   # installed on top of the variant
    files: tuple[tuple[str, int, str], ...] = ()  # (absolute path in the image, mode, text)
    commands: str = ""                          # shell script run inside the image (chroot) after the files
    size_mib: int = 2048                        # the ext4 file system's size (the file is sparse)
    variant: str = "minbase"

    def digest(self) -> str:
        h = hashlib.sha256(f"image-format:{IMAGE_FORMAT}\n".encode())
        h.update(json.dumps(asdict(self), sort_keys=True).encode())
        return h.hexdigest()


@dataclass(frozen=True)
class Image:
    folder: Path
    info: dict

    @property
    def disk(self) -> Path:
        return self.folder / "disk.img"

    def file(self, name: str) -> Path:
        """A file the recipe exported (e.g. 'vmlinuz'); an error naming the image if it is missing."""
        path = self.folder / "export" / name
        if not path.is_file():
            raise UserError(f"image {self.folder.name}: has no exported file {name!r}; remove {self.folder} "
                            "to rebuild it")
        return path


def cached(recipe: Recipe, cache_dir: Path) -> Image | None:
    folder = cache_dir / "images" / f"{recipe.name}-{recipe.digest()[:16]}"
    info_path = folder / "image.json"
    if not info_path.is_file():
        return None
    try:
        return Image(folder, json.loads(info_path.read_text()))
    except ValueError:
        return None


def build(recipe: Recipe, cache_dir: Path, note: Callable[[str], None] = lambda _m: None) -> Image:
    """The image for a recipe: from the cache, else built now (a few minutes; `note` hears progress)."""
    found = cached(recipe, cache_dir)
    if found:
        return found
    _check_can_build(recipe)
    images = private_dir(cache_dir / "images")
    lock = open_nofollow(images / f".{recipe.name}.lock")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run building the same image: wait for it, then reuse
        found = cached(recipe, cache_dir)
        if found:
            return found
        return _build(recipe, images, note)
    finally:
        lock.close()


def _check_can_build(recipe: Recipe) -> None:
    """Before anything is written: the recipe stays inside its image, and this machine can build it."""
    for path, _mode, _text in recipe.files:
        if not path.startswith("/") or ".." in Path(path).parts:
            raise UserError(f"image {recipe.name}: file path {path!r} must be absolute and stay in the image")
    if os.geteuid() != 0:
        raise UserError(f"image {recipe.name}: building it needs root (mmdebstrap writes a root file system "
                        "owned by root); run the command as root once, later runs reuse the cached image")
    for tool in ("mmdebstrap", "mkfs.ext4", "chroot", "dpkg-query"):
        if not shutil.which(tool):
            raise UserError(f"image {recipe.name}: needs {tool}; run 'make deps' (installs mmdebstrap and e2fsprogs)")


def _build(recipe: Recipe, images: Path, note: Callable[[str], None]) -> Image:
    digest = recipe.digest()
    final = images / f"{recipe.name}-{digest[:16]}"
    work = Path(tempfile.mkdtemp(prefix=f".{recipe.name}-", dir=images))  # private (0700), unpredictable
    t0 = time.monotonic()
    try:
        rootfs = work / "rootfs"
        staging = work / "staging"
        for path, mode, text in recipe.files:
            target = staging / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            os.chmod(target, mode)
        script = staging / "memballoon-build.sh"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text("set -e\nmkdir -p /" + EXPORT + "\n" + recipe.commands + "\n")
        note(f"image {recipe.name}: building with mmdebstrap ({recipe.suite}, {len(recipe.packages)} packages; "
             "a few minutes, once)")
        cmd = ["mmdebstrap", f"--variant={recipe.variant}", "--mode=root", "--quiet",
               "--aptopt=Acquire::Retries \"2\"", "--aptopt=Acquire::http::Timeout \"30\"",
               f"--include={','.join(recipe.packages)}",
               # the recipe's files; folders (and symlinks to folders: merged /usr) that exist in the image stay as they are
               '--customize-hook=tar -C "$MEMBALLOON_STAGING" -cf - . | tar -C "$1" -xf - --no-overwrite-dir --keep-directory-symlink',
               "--customize-hook=chroot \"$1\" /bin/sh /memballoon-build.sh",
               '--customize-hook=rm -f "$1"/memballoon-build.sh',
               recipe.suite, str(rootfs), kernels.mirror()]
        _run(cmd, recipe, "mmdebstrap", hint="apt's own messages are in the full output; another mirror is set "
                                             "with MEMBALLOON_DEBIAN_MIRROR",
             env={**os.environ, "MEMBALLOON_STAGING": str(staging)})
        export = work / "export"
        shutil.move(str(rootfs / EXPORT), export)  # secrets and boot files leave the image
        os.chmod(export, 0o700)
        versions = subprocess.run(["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-W",
                                   "-f=${Package} ${Version}\n"], capture_output=True, text=True).stdout
        note(f"image {recipe.name}: writing the ext4 disk ({recipe.size_mib} MiB, sparse)")
        _run(["mkfs.ext4", "-q", "-F", "-L", recipe.name[:16], "-d", str(rootfs), str(work / "disk.img"),
              f"{recipe.size_mib}M"], recipe, "mkfs.ext4", hint="is there room in the cache folder?")
        shutil.rmtree(rootfs)
        shutil.rmtree(staging)
        info = {"recipe": asdict(recipe), "sha256_recipe": digest, "mirror": kernels.mirror(),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_seconds": round(time.monotonic() - t0, 1),
                "packages": dict(line.split(" ", 1) for line in versions.splitlines() if " " in line),
                "exports": sorted(p.name for p in export.iterdir())}
        (work / "image.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(work, final)
        note(f"image {recipe.name}: built in {info['build_seconds']:.0f} s")
        return Image(final, info)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # nothing half-made stays behind


def _run(cmd: list[str], recipe: Recipe, what: str, hint: str, env: dict | None = None) -> None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT, stdin=subprocess.DEVNULL,
                             env=env)
    except subprocess.TimeoutExpired:
        raise UserError(f"image {recipe.name}: {what} did not finish within {BUILD_TIMEOUT} s; {hint}") from None
    if out.returncode != 0:
        lines = [ln.strip() for ln in (out.stderr + "\n" + out.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith(("E:", "Err:", "error", "mkfs"))
                  and "mmdebstrap failed to run" not in ln] or lines
        tail = errors[0][:300] if errors else "(no output)"  # the first error says why; later ones follow from it
        log_path = Path(tempfile.gettempdir()) / f"memballoon-image-{recipe.name}-{os.getpid()}.log"
        with open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "w") as f:
            f.write(out.stdout + out.stderr)
        hint = f"{hint} (full output: {log_path})"
        raise UserError(f"image {recipe.name}: {what} failed (exit {out.returncode}): {tail}; {hint}")
