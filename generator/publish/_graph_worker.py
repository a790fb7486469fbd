"""Imported only by the build's forkserver (its preload list), never by the tool itself.

The forkserver starts each graph worker and, if the start fails, prints the failure through
sys.excepthook. A start fails only when the build is gone (Ctrl-C, an error elsewhere), and the
build reports that itself: the workers stay silent rather than print a traceback after it."""
import sys


def _quiet(*_exc_info) -> None:
    pass


sys.excepthook = _quiet
