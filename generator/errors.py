"""One exception base for everything a user can fix; the CLI turns it into one line and exit 1."""
from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or environment, worded so they can act on it."""


class ManifestError(UserError):
    """A manifest that does not validate; carries every problem found, each with its key path."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        first = problems[0] if problems else "invalid"
        more = f" (and {len(problems) - 1} more problem(s); run 'validate' to see all)" if len(problems) > 1 else ""
        super().__init__(f"{path}: {first}{more}")

    def full(self) -> str:
        return "\n".join(f"{self.path}: {p}" for p in self.problems)


class Interrupted(Exception):
    """The sweep is being interrupted (Ctrl-C, SIGTERM): the point or the step is abandoned, not
    recorded. Here, not in measure, so that every layer can raise it without importing a later one."""


StopRequested = Interrupted  # the name the sweep's code grew up with


class HostError(UserError):
    """A host that cannot be reached or used."""


def libvirt_message(e: Exception) -> str:
    """What a libvirt error says: libvirt's own message, else the exception's text (an error raised
    without a libvirt error behind it has no message of libvirt's)."""
    message = getattr(e, "get_error_message", lambda: None)()
    return message or str(e)


def daemon_hint(uri: str, message: str, measuring: bool = False) -> str:
    """What to do when a local libvirt URI finds no daemon socket: start the daemon (how depends on the
    machine), or use the embedded driver. Empty where the message is about something else."""
    if "Failed to connect socket" not in message or "No such file or directory" not in message:
        return ""
    from urllib.parse import urlsplit

    if urlsplit(uri).hostname:
        return "; libvirt's daemon is not running on that host: start it there"
    return ("; libvirt's daemon is not running here: start it (systemctl start libvirtd, or virtqemud for the "
            "modular daemons; without systemd: libvirtd -d)"
            + (", or measure with uri: embedded, which needs no daemon" if measuring else ""))
