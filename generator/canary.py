"""The canary: a short boot of the probe that tells whether a domain type (KVM) really runs guests here."""
from __future__ import annotations

import threading
import time

from . import hypervisors
from .domain import DomainSpec, domain_name, kernel_cmdline
from .errors import StopRequested
from .guests.console import Console, excerpt, one_line
from .hosts import HostRuntime, libvirt_module
from .readings import alive, destroy

CANARY_SILENT_S = 2.5  # after the guest started: under KVM its kernel prints within a fraction of that


def canary(host: HostRuntime, *, kernel: str, initrd: str, domain_type: str, timeout: float, run_id: str,
           stop: threading.Event | None = None) -> tuple[bool, str]:
    """Boot the probe briefly with a domain type; (True, why) if its init answered in time. A guest that
    has printed nothing at all after CANARY_SILENT_S is not running: where KVM works the kernel's first
    lines reach the console well within a second, so the answer 'unusable' takes seconds, not the
    whole timeout."""
    libvirt = libvirt_module()
    conn = host.connect()
    name = domain_name(run_id, f"canary-{domain_type}")
    console_path = host.console_path(name)
    host.prepare_console(console_path)
    xml = hypervisors.render(DomainSpec(
        name=name, domain_type=domain_type, memory_mib=256, current_memory_mib=256, vcpus=1, kernel=kernel,
        initrd=initrd, cmdline=kernel_cmdline(mode="canary", stable=1, settle=1, balloon_kib=0),
        console=console_path, balloon_model="none", stats_period=1))
    t0 = time.monotonic()
    dom = None
    try:
        dom = conn.createXML(xml, 0)
        started = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if stop is not None and stop.is_set():
                raise StopRequested()
            text = host.read_text(console_path)
            if Console.parse(text).has("canary-ok"):
                return True, f"canary boot answered in {time.monotonic() - t0:.1f} s"
            if not text.strip() and time.monotonic() - started > min(CANARY_SILENT_S, timeout):
                return False, f"the canary guest printed nothing in {CANARY_SILENT_S:g} s"
            if not alive(dom, libvirt):
                tail = excerpt(host.read_text(console_path), 3)
                return False, "canary guest stopped without answering" + (f": {tail[-1]}" if tail else "")
            time.sleep(0.3)
        return False, f"canary boot did not answer within {timeout:g} s"
    except libvirt.libvirtError as e:
        return False, one_line(e.get_error_message() or str(e))
    finally:
        # A QEMU stuck in a KVM that runs nothing takes seconds to die: the answer does not wait for it. The
        # thread is not a daemon, so the process never exits with the canary still running.
        def teardown():
            if dom is not None:
                destroy(dom, libvirt)
            host.remove(console_path)

        threading.Thread(target=teardown, name=f"teardown-{name}").start()
