"""Where a guest's kernel or disk image comes from when a manifest names a distribution rather than a
file: `kernel: debian:trixie`, `image: debian:bookworm`. Each source is one `Source` here (its name,
how a release is spelt and checked, how its kernel is fetched and its system image built) and its line
in SOURCES; the manifest, the probe and the guest kinds only ask `parse(spec)`. Debian is the one
source today; another distribution is one more class.
"""
from __future__ import annotations

import re
from pathlib import Path


class Source:
    name = ""                                 # the prefix in a manifest: '<name>:<release>'
    release_re = r"[a-z][a-z0-9-]{0,30}"      # what a release may look like (checked before anything runs)
    examples: tuple[str, ...] = ()            # for messages: 'debian:trixie', …
    release_word = "release"                  # what the source calls a release (Debian: a suite)

    def release_problem(self, release: str, cache_dir: Path) -> str | None:
        """Why the release cannot be used, from the source's own answer; None if it can, or if the
        source cannot be asked now."""
        return None

    def fetch_kernel(self, release: str, cache_dir: Path) -> tuple[Path, Path]:
        """(vmlinuz, modules folder) of the release's kernel, fetched once into the cache."""
        raise NotImplementedError

    def build_image(self, release: str, reading: str, cache_dir: Path, note):
        """A small full system of this release, built once into the cache, whose guest is read through
        `reading` (agent, console or ssh): a guests.images.Image (its disk, and its files: vmlinuz,
        initrd.img, and for ssh the host key and the client key). `note` hears progress."""
        raise NotImplementedError


class Debian(Source):
    """Debian's archive: kernels with apt-get and dpkg-deb, systems with mmdebstrap (kernels.py, system.py)."""

    name = "debian"
    examples = ("debian:trixie", "debian:bookworm")
    release_word = "suite"

    def release_problem(self, release, cache_dir):
        from .kernels import suite_problem

        return suite_problem(release, cache_dir)

    def fetch_kernel(self, release, cache_dir):
        from .kernels import fetch

        return fetch(f"debian:{release}", cache_dir)

    def build_image(self, release, reading, cache_dir, note):
        from . import images
        from .system import debian_recipe

        return images.build(debian_recipe(release, reading), cache_dir, note)


SOURCES: tuple[Source, ...] = (Debian(),)


def parse(spec: str) -> tuple[Source, str] | None:
    """(source, release) for '<source>:<release>' with a known source and a well-formed release; None
    for anything else ('host', a path, a misspelling: see `problem`)."""
    if not isinstance(spec, str) or ":" not in spec:
        return None
    name, release = spec.split(":", 1)
    source = next((s for s in SOURCES if s.name == name), None)
    if source is None or not re.fullmatch(source.release_re, release):
        return None
    return source, release


def problem(spec: str) -> str | None:
    """Why a spec that names a source is not a usable one ('debian:Trixie!'); None if it names no source
    (a path, 'host') or a good one."""
    if not isinstance(spec, str) or ":" not in spec:
        return None
    name = spec.split(":", 1)[0]
    source = next((s for s in SOURCES if s.name == name), None)
    if source is None or parse(spec):
        return None
    return f"{spec!r} is not a {source.name.capitalize()} {source.release_word} (e.g. {', '.join(source.examples)})"


def names_a_source(spec: str) -> bool:
    """Whether the spec is a distribution's release ('debian:trixie'), not a file or 'host'."""
    return parse(spec) is not None
