"""Disk images from a manifest (generator/guests/images.py, manifest checks): backing files and
external data files outside the project are refused, raw images are never probed."""
from __future__ import annotations

import subprocess

from generator.manifest import load
from tests.support import main, one_line_error  # noqa: F401
from tests.support.manifests import BASE, with_guest, write  # noqa: F401


def qemu_img(*args):
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def test_an_image_whose_backing_file_is_a_host_file_is_refused(tmp_path):
    write(tmp_path, BASE)
    image = tmp_path / "x" / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/hostname", str(image), "1M")
    line = one_line_error(main("validate", str(with_guest(tmp_path, f"{{name: g, image: {image}}}"))))
    assert "guests[0].image" in line and "backing file is '/etc/hostname'" in line


def test_an_image_with_an_external_data_file_is_refused(tmp_path):
    write(tmp_path, BASE)
    image = tmp_path / "x" / "disk.qcow2"
    outside = tmp_path / "data.raw"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={outside}", str(image), "1M")
    line = one_line_error(main("validate", str(with_guest(tmp_path, f"{{name: g, image: {image}}}"))))
    assert "guests[0].image" in line and "external data file" in line


def test_a_listed_backing_file_inside_the_project_is_allowed(tmp_path):
    write(tmp_path, BASE)
    base, top = tmp_path / "x" / "base.qcow2", tmp_path / "x" / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "1M")
    qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(top), "1M")
    path = with_guest(tmp_path, f"{{name: g, image: {top}}}")
    assert "backing file" in one_line_error(main("validate", str(path)))
    path = with_guest(tmp_path, f"{{name: g, image: {top}, backing: [base.qcow2]}}")
    assert main("validate", str(path)).returncode == 0


def test_a_raw_image_is_never_probed(tmp_path):
    """A raw disk whose guest wrote qcow2's magic (and a backing file name) must not become a qcow2."""
    write(tmp_path, BASE)
    forged = tmp_path / "x" / "forged.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/hostname", str(forged), "1M")
    raw = tmp_path / "x" / "disk.img"
    raw.write_bytes(forged.read_bytes())
    forged.unlink()
    line = one_line_error(main("validate", str(with_guest(tmp_path, f"{{name: g, image: {raw}}}"))))
    assert "guests[0].image" in line and "set format: qcow2" in line
    m = load(with_guest(tmp_path, f"{{name: g, image: {raw}, format: raw}}"))
    assert m.guests[0].image_format() == "raw"  # said explicitly: taken as raw, its bytes never interpreted
    anon = tmp_path / "x" / "disk.bin"
    anon.write_bytes(b"\0" * 512)
    assert "set format" in one_line_error(main("validate", str(with_guest(tmp_path, f"{{name: g, image: {anon}}}"))))


def test_protocol_named_backing_files_are_refused_before_qemu_img_opens_them(tmp_path, monkeypatch):
    """'fat:<host folder>' and 'file:<host file>' are QEMU protocols, not file names: listing
    '../../fat:…' under backing: must not make them pass, and validate's own qemu-img must not open them."""
    from generator.guests import diskimage

    write(tmp_path, BASE)
    host_dir = tmp_path / "host-secrets"
    host_dir.mkdir()
    calls = []
    real_run = diskimage.subprocess.run
    monkeypatch.setattr(diskimage.subprocess, "run", lambda cmd, *a, **k: calls.append(cmd) or real_run(cmd, *a, **k))
    for i, name in enumerate((f"fat:{host_dir}", "file:/etc/hostname", "json:{\"driver\":\"file\"}")):
        image = tmp_path / "x" / f"p{i}.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", name, str(image), "1M")
        # listed as it is, the name resolves inside the project ('<project>/fat:/…'): the confinement passes
        listed = name.replace("'", "''")
        line = one_line_error(main("validate", str(with_guest(tmp_path, f"{{name: g, image: {image}, "
                                                                       f"backing: ['{listed}']}}"))))
        assert "guests[0].image" in line and "protocol name" in line, line
    assert not any("info" in c for c in calls if isinstance(c, list) and "qemu-img" in str(c[0])), calls


def test_a_relative_backing_name_resolves_against_its_image_not_the_working_folder(tmp_path, monkeypatch):
    write(tmp_path, BASE)
    base, top = tmp_path / "x" / "base.qcow2", tmp_path / "x" / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "1M")
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-F", "qcow2", "-b", "base.qcow2", str(top), "1M")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = with_guest(tmp_path, f"{{name: g, image: {top}, backing: [base.qcow2]}}")
    assert main("validate", str(path)).returncode == 0
