"""Debian kernels (generator/guests/kernels.py): an unreachable mirror is named and leaves nothing."""
from __future__ import annotations

import pytest

from generator.errors import UserError


def test_unreachable_debian_mirror_is_named_and_leaves_nothing(tmp_path, monkeypatch):
    import socket

    from generator.guests import kernels

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MEMBALLOON_DEBIAN_MIRROR", f"http://127.0.0.1:{port}/debian")
    with pytest.raises(UserError, match=rf"guest kernel 'debian:bookworm': could not reach the Debian mirror "
                                        rf"http://127.0.0.1:{port}/debian for 'bookworm'"):
        kernels.fetch("debian:bookworm", tmp_path)
    assert list((tmp_path / "kernels").iterdir()) == []  # no work folder, no half-unpacked kernel
    monkeypatch.setenv("MEMBALLOON_DEBIAN_MIRROR", "http://x/\nevil")
    with pytest.raises(UserError, match="is not a plain http"):
        kernels.fetch("debian:bookworm", tmp_path)
