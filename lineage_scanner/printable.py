"""Text for people: what came from a model, a card or a server made safe to show anywhere, and p-values
written as numbers a person reads.

Model names, revisions, file names and error messages are chosen by whoever publishes a repo. Printed
raw, an escape sequence in one rewrites the terminal (colours, a cleared screen, a fake prompt, a title
set to a command); a bidirectional override makes a name read as another; a lone surrogate (a file name
that is not UTF-8) stops the print with an error; XML (GraphML, an SVG figure) cannot hold most control
characters at all. So every such text passes through :func:`printable` on its way to a person: each
control, format or unpaired surrogate character becomes a visible escape (``\\x1b``, ``\\u202e``), and
the rest is left alone. :func:`xml_safe` does the same and also doubles backslashes, so that two
different names never escape to the same text (GraphML uses names as node ids).
"""

from __future__ import annotations

import math
import re

#: C0 and C1 controls and DEL; zero-width and bidirectional formatting characters; line and paragraph
#: separators; the byte-order mark; surrogates (a file name's undecodable bytes); the XML non-characters.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff\ufffe\uffff]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text) -> str:
    """``text`` (anything, as ``str``) with every character that could act on a terminal or break XML
    written as a visible escape; None becomes the empty string."""
    return "" if text is None else _UNSAFE.sub(_escape, str(text))


def xml_safe(text) -> str:
    """:func:`printable`, one to one: a backslash is doubled first, so escapes cannot collide with text."""
    return printable("" if text is None else str(text).replace("\\", "\\\\"))


#: Below this a p-value underflows a float (1e-308); it is written as a bound, with its log10 beside it.
P_FLOOR_LOG10 = -300


def pvalue(p: float | None, log10_p: float | None = None) -> str:
    """A p-value as a person reads it: ``0.034``, ``1.2e-5``, or, where it underflows a float,
    ``< 1e-300 (log10 p = -658.2)``; ``n/a`` where there is none. ``log10_p`` is used when given (a
    sketch's p-value is kept as its logarithm, since it underflows)."""
    if log10_p is not None and math.isfinite(log10_p):
        if log10_p < P_FLOOR_LOG10:
            return f"< 1e{P_FLOOR_LOG10} (log10 p = {log10_p:.1f})"
        p = 10.0**log10_p
    if p is None or not math.isfinite(p):
        return "n/a"
    if p < 10.0**P_FLOOR_LOG10:  # 0.0 where a float underflowed
        return f"< 1e{P_FLOOR_LOG10}"
    if p >= 1e-3:
        return f"{p:.3g}"
    mantissa, exponent = f"{p:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def p_is(p: float | None, log10_p: float | None = None) -> str:
    """``p = 0.034``, or ``p < 1e-300 (log10 p = -658.2)``: :func:`pvalue` after "p"."""
    text = pvalue(p, log10_p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"
