"""Guest kernels from Debian's archive: `kernel: debian:<suite>` in a manifest.

apt-get downloads the suite's linux-image package with a private sources list and state folder
(the machine's own apt setup is not touched), and dpkg-deb unpacks it into the cache. The package
carries no modules.dep (depmod runs at install time); the probe reads each module's own
dependency list instead.
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

from ..errors import UserError

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEFAULT_MIRROR = "http://deb.debian.org/debian"


def mirror() -> str:
    """The Debian mirror: MEMBALLOON_DEBIAN_MIRROR, else Debian's CDN. It goes into a sources.list
    line, so it must be one plain http(s) URL."""
    url = os.environ.get("MEMBALLOON_DEBIAN_MIRROR", DEFAULT_MIRROR)
    if not re.fullmatch(r"https?://[A-Za-z0-9.:\[\]_-]+(/[A-Za-z0-9._~/%+-]*)?", url):
        raise UserError(f"MEMBALLOON_DEBIAN_MIRROR={url!r} is not a plain http(s) URL of a Debian mirror")
    return url
_SUITE_RE = re.compile(r"^debian:([a-z][a-z0-9-]*)$")
# Debian's codenames and aliases, for "did you mean" only: whether a suite exists is the mirror's answer.
CODENAMES = ("buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid", "stable", "oldstable",
             "oldoldstable", "testing", "unstable", "experimental")


def suite_problem(suite: str, cache_dir: Path, timeout: float = 10.0) -> str | None:
    """Why `suite` cannot be used, from the mirror's own answer (dists/<suite>/Release); None when the
    mirror has it or cannot be asked now (then apt's own error is what the sweep shows). A suite
    found once is remembered in the cache."""
    import difflib
    import urllib.error
    import urllib.request

    known = cache_dir / "suites" / hashlib.sha256(mirror().encode()).hexdigest()[:16]
    if (known / suite).is_file():
        return None
    url = f"{mirror().rstrip('/')}/dists/{suite}/Release"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            pass
    except urllib.error.HTTPError as e:
        if e.code != 404:
            return None
        hint = difflib.get_close_matches(suite, CODENAMES, n=1, cutoff=0.6)
        return (f"the Debian mirror {mirror()} has no suite {suite!r} (no dists/{suite}/Release)"
                + (f"; did you mean 'debian:{hint[0]}'?" if hint else
                   f"; suites are codenames such as {', '.join(CODENAMES[:4])}"))
    except (OSError, ValueError):
        return None  # no answer now: not a guess about the network; apt says what is wrong, if anything
    try:
        known.mkdir(parents=True, exist_ok=True)
        (known / suite).touch()
    except OSError:
        pass
    return None


def _arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def fetch(spec: str, cache_dir: Path) -> tuple[Path, Path]:
    """(vmlinuz, modules folder) of Debian <suite>'s current kernel, fetched once into the cache."""
    suite = _SUITE_RE.match(spec).group(1)
    folder = cache_dir / "kernels" / f"debian-{suite}"
    found = _unpacked(folder)
    if found:
        return found
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if not shutil.which(tool):
            raise UserError(f"guest kernel {spec!r}: needs Debian's {tool}; on other systems set kernel to a "
                            "vmlinuz path and modules to its modules folder")
    work = folder.with_name(folder.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    try:
        package, deb = _download(spec, suite, work)
        unpacked = work / "root"
        _apt(["dpkg-deb", "-x", str(deb), str(unpacked)], spec)
        shutil.rmtree(folder, ignore_errors=True)
        unpacked.rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # never leave a half-made work folder behind
    found = _unpacked(folder)
    if not found:
        raise UserError(f"guest kernel {spec!r}: {package} holds no vmlinuz and modules")
    return found


def _download(spec: str, suite: str, work: Path) -> tuple[str, Path]:
    """apt-get with a private sources list and an empty package state: only the mirror counts,
    never the packages installed on this machine."""
    (work / "lists" / "partial").mkdir(parents=True)
    (work / "cache" / "archives" / "partial").mkdir(parents=True)
    (work / "parts").mkdir()
    (work / "status").write_text("")
    signed = f"[signed-by={KEYRING}] " if Path(KEYRING).exists() else ""
    url = mirror()
    (work / "sources.list").write_text(f"deb {signed}{url} {suite} main\n")
    opts = [f"-o=Dir::Etc::SourceList={work / 'sources.list'}", f"-o=Dir::Etc::SourceParts={work / 'parts'}",
            f"-o=Dir::State::Lists={work / 'lists'}", f"-o=Dir::State::Status={work / 'status'}",
            f"-o=Dir::Cache={work / 'cache'}", "-o=APT::Get::List-Cleanup=0", "-o=APT::Sandbox::User=root",
            "-o=Acquire::Retries=1", "-o=Acquire::http::Timeout=30"]
    update = _apt(["apt-get", *opts, "update"], spec, both=True)
    if not list((work / "lists").glob("*_Packages*")):  # apt-get update exits 0 when a mirror is unreachable
        warning = next((ln for ln in reversed(update.splitlines()) if ln.startswith(("W:", "E:", "Err:"))), "")
        raise UserError(f"guest kernel {spec!r}: could not reach the Debian mirror {url} for {suite!r}"
                        + (f" ({warning.strip()[:200]})" if warning else "")
                        + "; check the network or set MEMBALLOON_DEBIAN_MIRROR")
    meta = f"linux-image-{_arch()}"
    depends = _apt(["apt-cache", *opts, "depends", meta], spec)
    m = re.search(r"Depends: (linux-image-\S+)", depends)
    if not m:
        raise UserError(f"guest kernel {spec!r}: {meta} in {suite} names no kernel package")
    package = m.group(1)
    _apt(["apt-get", *opts, "download", package], spec, cwd=work)
    debs = sorted(work.glob(f"{package}_*.deb"))
    if not debs:
        raise UserError(f"guest kernel {spec!r}: apt-get download {package} left no .deb")
    return package, debs[-1]


def _unpacked(folder: Path) -> tuple[Path, Path] | None:
    images = sorted((folder / "boot").glob("vmlinuz-*"))
    if not images:
        return None
    release = images[-1].name[len("vmlinuz-"):]
    for base in ("usr/lib/modules", "lib/modules"):
        modules = folder / base / release
        if modules.is_dir():
            return images[-1], modules
    return None


def _apt(cmd: list[str], spec: str, cwd: Path | None = None, both: bool = False) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=900)
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"guest kernel {spec!r}: {' '.join(c for c in cmd if not c.startswith('-o='))} "
                        f"failed: {tail}")
    return out.stdout + ("\n" + out.stderr if both else "")
