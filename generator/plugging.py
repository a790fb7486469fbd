"""Memory plugged into a running guest, and taken out again: the fix measured as it is used.

A virtio-mem or DIMM guest boots with currentMemory and room up to memory. Once the probe has reported
(its 'done'), the host plugs `plugged` MiB (virtio-mem: the device's requested size, as `virsh
update-memory-device --requested-size` sets it; DIMM: one DIMM attached, as `virsh attach-device`),
waits until the guest's MemTotal has taken all of it in, then unplugs it again (requested size 0; the
DIMM detached) and waits until MemTotal is back where it was. A step that does not get there within
STEP_LIMIT_S is recorded with where it got to and an error. A step's time runs from just before the
libvirt call (a DIMM's attach or detach may itself wait for the guest) to when the host read the report
of MemTotal where the step takes it; the probe and the host each look every 0.2 s. The probe reports MemTotal and MemFree
whenever MemTotal changes ('memtotal-now'), for as long as the host holds it (memballoon.hold).

What plugging cost the guest shows in MemFree: the page descriptors of plugged memory come out of memory
the guest already had (they arrive with the memory, not at boot), so MemFree grows by less than MemTotal.
Recorded as the record's `plug`.
"""
from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET

from .guests.probe import MARK

_NOW_RE = re.compile(r"^" + re.escape(MARK) + r" memtotal-now ([0-9]{1,15}) ([0-9]{1,15}) "
                     r"([0-9]{1,9}(?:\.[0-9]{1,3})?)\r?$", re.M)  # a whole line of the probe's, nothing else
HOLD_S = 240             # how long a probe that gets memory plugged stays up after 'done'
STEP_LIMIT_S = 100.0     # a plug or an unplug that takes longer is recorded as not finished


class Plugger:
    """How memory is plugged into and out of one memory model's guest (libvirt calls, live)."""

    def plug(self, dom, libvirt, kib: int) -> None:
        raise NotImplementedError

    def unplug(self, dom, libvirt, kib: int) -> None:
        raise NotImplementedError


def _memory_devices(dom, model: str) -> list[ET.Element]:
    return [d for d in ET.fromstring(dom.XMLDesc(0)).iter("memory") if d.get("model") == model]


class VirtioMem(Plugger):
    """The device's requested size: the guest's driver plugs (or unplugs) blocks until it matches."""

    def _request(self, dom, libvirt, kib: int) -> None:
        device = _memory_devices(dom, "virtio-mem")[0]
        device.find("target/requested").text = str(kib)
        current = device.find("target/current")
        if current is not None:  # what the guest has now: libvirt reports it, and takes no value for it
            device.find("target").remove(current)
        dom.updateDeviceFlags(ET.tostring(device, encoding="unicode"), libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def plug(self, dom, libvirt, kib: int) -> None:
        self._request(dom, libvirt, kib)

    def unplug(self, dom, libvirt, kib: int) -> None:
        self._request(dom, libvirt, 0)


class Dimm(Plugger):
    """One DIMM of the plugged size, attached; detached again (the guest offlines and ejects it)."""

    def plug(self, dom, libvirt, kib: int) -> None:
        device = ET.Element("memory", model="dimm")
        target = ET.SubElement(device, "target")
        ET.SubElement(target, "size", unit="KiB").text = str(kib)
        ET.SubElement(target, "node").text = "0"
        dom.attachDeviceFlags(ET.tostring(device, encoding="unicode"), libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def unplug(self, dom, libvirt, kib: int) -> None:
        device = _memory_devices(dom, "dimm")[-1]
        dom.detachDeviceFlags(ET.tostring(device, encoding="unicode"), libvirt.VIR_DOMAIN_AFFECT_LIVE)


# memory model -> how memory is plugged into its guests (the balloon model has nothing to plug into)
PLUGGERS: dict[str, Plugger] = {"virtio-mem": VirtioMem(), "dimm": Dimm()}


def readings(console: str) -> list[tuple[int, int, float]]:
    """Every (MemTotal KiB, MemFree KiB, guest uptime) the probe reported after 'done'."""
    return [(int(a), int(b), float(t)) for a, b, t in _NOW_RE.findall(console)]


def _wait(read, start: int, arrived, stop, t0: float) -> tuple[tuple | None, float, bool]:
    """Until the guest's MemTotal has arrived where the step takes it (`arrived(total)`): (the last
    reading, seconds from t0 (before the libvirt call) to when the host read it, True); after STEP_LIMIT_S
    (or a stop): (the last reading, or None, the seconds waited, False)."""
    seen, last = start, None
    while time.monotonic() - t0 < STEP_LIMIT_S and not stop.is_set():
        now = readings(read())[seen:]
        if now:
            seen += len(now)
            last = now[-1]
            if arrived(last[0]):
                return last, time.monotonic() - t0, True
        time.sleep(0.2)
    return last, time.monotonic() - t0, False


def plug_and_unplug(run, dom, libvirt, record: dict, read) -> None:
    """Plug the point's `plugged_mib` into the running guest, then unplug it; what the guest saw at each
    step and how long each took go into record['plug']. `read` returns the guest's console so far."""
    kib = run.point.plugged_mib * 1024
    plugger = PLUGGERS[run.point.memory_model]
    # where the changes start from: the probe's first report after 'done' (its MemFree now, not when it
    # settled); the settled reading if that report has not come
    deadline = time.monotonic() + 5
    while not readings(read()) and time.monotonic() < deadline:
        time.sleep(0.2)
    first = readings(read())
    before, free_before = (first[-1][0], first[-1][1]) if first else \
        (record["memtotal_settled_kib"], (record.get("meminfo") or {}).get("MemFree"))
    plug: dict = {"plugged_kib": kib, "memtotal_before_kib": before, "memfree_before_kib": free_before}
    record["plug"] = plug
    steps = (("plug", plugger.plug, lambda total: total >= before + kib, "plugged",
              "MemTotal did not take in all of the plugged memory"),
             ("unplug", plugger.unplug, lambda total: total <= before, "unplugged",
              "MemTotal did not give all of the memory back"))
    for name, act, arrived, state, short in steps:
        start = len(readings(read()))
        t0 = time.monotonic()
        try:
            act(dom, libvirt, kib)
        except libvirt.libvirtError as e:
            plug["error"] = f"{name}ging failed: {(e.get_error_message() or str(e))[:200]}"
            return
        got, seconds, done = _wait(read, start, arrived, run.stop, t0)
        if got is not None:
            plug.update({f"memtotal_{state}_kib": got[0], f"memfree_{state}_kib": got[1]})
        if not done:
            plug["error"] = f"{short} within {STEP_LIMIT_S:g} s"
            return
        plug[f"{name}_s"] = round(seconds, 2)
