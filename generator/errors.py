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
