"""Filesystem helpers for a tool that runs as root on input written by others.

Every path that comes from a manifest, a record or a build state is checked to resolve inside
its root (after symlinks); files read from such places must be regular files of bounded size;
folders the tool keeps its own state in are private (0700, ours, not symlinks), and files in
them are created without following symlinks.
"""
from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

from .errors import HostError, UserError


def inside(path: str | Path, root: str | Path, what: str = "path") -> Path:
    """`path` resolved (symlinks followed); a UserError unless it is `root` or below it."""
    resolved = Path(path).resolve()
    base = Path(root).resolve()
    if resolved != base and base not in resolved.parents:
        raise UserError(f"{what} {str(path)!r} resolves to {resolved}, outside {base}; "
                        f"keep it inside {base}")
    return resolved


def is_inside(path: str | Path, root: str | Path) -> bool:
    try:
        inside(path, root)
        return True
    except UserError:
        return False


def read_regular(path: str | Path, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most `limit` bytes; never blocks on a FIFO or device."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise UserError(f"{path}: cannot read the {what} ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{path}: the {what} is not a regular file; remove it or replace it with one")
        if st.st_size > limit:
            raise UserError(f"{path}: the {what} is {st.st_size} bytes, more than the {limit} allowed")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise UserError(f"{path}: the {what} grew past the {limit} bytes allowed while being read")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise UserError(f"{path}: cannot read the {what} ({e.strerror})") from None
    finally:
        os.close(fd)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now (for a forward the tool sets up)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lock_or_refuse(path: str | Path, busy: str):
    """An exclusive lock on `path` (a private file, never a symlink), held while the returned file is
    open; if another process holds it, a UserError with `busy` (which may name '{holder}': the pid
    written in the file)."""
    import fcntl

    lock = open_nofollow(path)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise HostError(busy.format(holder=holder)) from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def private_dir(path: str | Path, mode: int = 0o700) -> Path:
    """Create (or check) a folder only this user can write: a real folder, ours, no access for others.

    A folder someone else planted at the name (a symlink, another owner, group- or world-writable)
    is refused rather than used or "fixed": it may be an attack on a root-run tool.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(p, mode)
    except FileExistsError:
        pass
    except OSError as e:
        raise UserError(f"{p}: cannot create the folder ({e.strerror})") from None
    st = os.lstat(p)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{p}: expected a private folder but found a symlink or a file; remove it "
                        "(someone else may have planted it)")
    if st.st_uid != os.geteuid():
        raise UserError(f"{p}: the folder belongs to uid {st.st_uid}, not to you (uid {os.geteuid()}); "
                        "remove it or choose another folder")
    if st.st_mode & 0o022 or (mode & 0o077 == 0 and st.st_mode & 0o077):
        raise UserError(f"{p}: the folder is accessible to others (mode {stat.S_IMODE(st.st_mode):04o}); "
                        f"run 'chmod {mode:o} {p}' or remove it")
    return p


def write_nofollow(path: str | Path, data: bytes, mode: int = 0o600) -> None:
    """Replace a file's content without following a symlink at its name (a planted one is an error)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e.strerror}); a symlink there is refused") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise UserError(f"{path}: not a regular file of yours; remove it")
        os.ftruncate(fd, 0)
        os.write(fd, data)
    finally:
        os.close(fd)


def open_nofollow(path: str | Path, mode: int = 0o600):
    """A file object for reading and writing, created if missing, never through a symlink."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as e:
        raise UserError(f"{path}: cannot open ({e.strerror}); a symlink there is refused") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise UserError(f"{path}: not a regular file of yours; remove it")
    return os.fdopen(fd, "r+")


def _open_dir_beneath(root: Path, parts: tuple[str, ...], create: bool) -> int:
    """A descriptor of root/parts…, opened one component at a time without following symlinks.

    `root` itself is resolved first (it is the caller's choice); below it, a symlink or a non-folder
    at any component is refused, so a planted `results/local -> /etc` cannot redirect a write."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            if part in ("", ".", "..") or "/" in part:
                raise UserError(f"{root}: {'/'.join(parts)} is not a plain path below it")
            if create:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as e:
                where = Path(root, *parts[:parts.index(part) + 1])
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UserError(f"{where}: expected a folder but found a symlink or a file; writing through "
                                    "it could leave the results folder, so it is refused: remove it") from None
                raise
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def write_beneath(root: str | Path, relative: str | Path, data: bytes, mode: int = 0o644) -> None:
    """Write root/relative atomically (readers see the old file or the new one, never a part); see
    write_all_beneath."""
    write_all_beneath(root, [(relative, data)], mode)


def write_all_beneath(root: str | Path, files: list[tuple[str | Path, bytes]], mode: int = 0o644,
                      failed: str = "") -> None:
    """Write several files below `root`, all or nothing: every file goes to an unpredictably named
    temporary file beside its target first, and only when all are written are they renamed into
    place (renaming cannot fail for lack of space). No symlink is followed below `root` (a planted
    `results/<host> -> /etc` or `site/content/posts/x -> /etc` is refused, not written through);
    missing folders are created. Any failure leaves nothing behind and is a UserError naming the
    file, followed by `failed` (e.g. '; nothing was changed in the site')."""
    root = Path(root).resolve()
    folders: dict[tuple, int] = {}
    staged: list[tuple[int, str, str, Path]] = []
    target = root
    try:
        try:
            root.mkdir(parents=True, exist_ok=True)
            for relative, data in files:
                rel = Path(relative)
                target = root / rel
                if rel.is_absolute() or not rel.parts or ".." in rel.parts:
                    raise UserError(f"{rel}: not a plain path below {root}")
                if rel.parts[:-1] not in folders:
                    folders[rel.parts[:-1]] = _open_dir_beneath(root, rel.parts[:-1], create=True)
                dfd = folders[rel.parts[:-1]]
                tmp = f".{rel.parts[-1]}.{secrets.token_hex(8)}.tmp"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=dfd)
                staged.append((dfd, tmp, rel.parts[-1], target))
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                    os.fchmod(f.fileno(), mode)
            for dfd, tmp, name, target in staged:
                os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            staged.clear()
        except OSError as e:
            raise UserError(f"{target}: cannot write ({e.strerror}){failed}") from None
    finally:
        for dfd, tmp, _, _ in staged:
            _unlink_quietly(tmp, dfd)
        for dfd in folders.values():
            os.close(dfd)


def _unlink_quietly(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass
