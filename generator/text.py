"""Text and numbers that come from guests and records, made harmless where they go.

A guest prints anything on its console, and a record or manifest may be written by someone else:
before such text reaches a terminal or a record it goes through `plain` (no control characters, so
no escape sequence reaches the operator's terminal); numbers read from it go through `bounded_int`
and `bounded_float` (a digit count checked before converting, finite and in range after).
"""
from __future__ import annotations

import math
import re

# Whole escape sequences first (so their parameters do not survive as text): CSI, OSC (ended by BEL
# or ST, or unterminated), DCS/SOS/PM/APC strings, two-character escapes, and their 8-bit C1 forms.
_ESCAPE_SEQ = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"            # CSI ... final byte
    r"|\x9b[0-?]*[ -/]*[@-~]?"
    r"|\x1b\][^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)?"   # OSC ... BEL / ST (OSC 0 title, OSC 52 clipboard)
    r"|\x9d[^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[PX^_][^\x1b\x9c\n]*(?:\x1b\\|\x9c)?"        # DCS, SOS, PM, APC strings (to the line's end at most)
    r"|[\x90\x98\x9e\x9f][^\x1b\x9c\n]*(?:\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?")                  # any other escape (ESC c resets the terminal)
# What is left: C0 controls, DEL, C1 controls, and the Unicode controls that reorder or hide text.
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SPACES = re.compile(r"[\t\n\r\v\f]")
_LINE_SPACES = re.compile(r"[\t\v\f]")


def plain(text, keep_newlines: bool = False) -> str:
    """`text` with every terminal control removed: escape sequences (CSI, OSC, DCS, …) dropped whole,
    tabs, line breaks and carriage returns turned into spaces, other control characters (ESC, BEL, BS,
    NUL, C1, bidirectional overrides) dropped. Printable text, including non-ASCII, is kept as it is.

    keep_newlines: for a console's text, which stays lines: CR LF and a lone CR become LF (as a
    terminal would show them), tabs become spaces."""
    text = str(text)
    if keep_newlines:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if all(line.isprintable() for line in text.split("\n")):
            return text
        text = _ESCAPE_SEQ.sub("", text)
        return _CONTROL.sub("", _LINE_SPACES.sub(" ", text))
    if text.isprintable():  # the common case: nothing to do, and nothing changed
        return text
    text = _ESCAPE_SEQ.sub("", text)
    return _CONTROL.sub("", _SPACES.sub(" ", text))


# --- numbers -----------------------------------------------------------------------------------------
MAX_DIGITS = 15          # a guest's memory in KiB or bytes fits in 15 digits (999 TB); more is not a reading
_INT = re.compile(r"[0-9]{1,%d}" % MAX_DIGITS)


def bounded_int(text: str, max_digits: int = MAX_DIGITS) -> int | None:
    """A non-negative whole number of at most `max_digits` ASCII digits, else None. The digit count is
    checked before converting: a 4,000-digit number printed by a guest is not parsed at all."""
    text = text.strip()
    if len(text) > max_digits or not _INT.fullmatch(text):
        return None
    return int(text)


_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")


def bounded_float(text: str, limit: float = 1e15) -> float | None:
    """A plain decimal number (no inf, nan, hex or digit separators) of at most 40 characters whose
    absolute value is below `limit`, else None."""
    text = text.strip()
    if len(text) > 40 or not _FLOAT.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) and abs(value) < limit else None
