"""One self-contained HTML page: inline CSS, inline SVG, inline script and data; nothing fetched at view time.

Everything that comes from a model (names, card fields, file names) may be hostile, so it reaches the
page only through :func:`esc` (text and attributes) or :func:`json_script` (data a script reads), never
pasted raw.
"""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone

from lineage_scanner import __version__
from lineage_scanner.printable import printable

CSS = """
:root { --ink: #1d2330; --muted: #5b6474; --line: #d9dee7; --derived: #1a7f37; --unrelated: #57606a;
        --inconclusive: #9a6700; --warn: #cf222e; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink); margin: 0 auto;
       max-width: 1180px; padding: 24px 32px 64px; }
h1 { font-size: 24px; margin: 0 0 4px; word-break: break-all; }
h2 { font-size: 18px; margin: 32px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
p.sub, .muted { color: var(--muted); }
.verdict { font-size: 19px; padding: 14px 18px; border-left: 6px solid var(--muted); background: #f6f8fa; }
.verdict.derived { border-color: var(--derived); } .verdict.unrelated { border-color: var(--unrelated); }
.verdict.inconclusive { border-color: var(--inconclusive); }
table { border-collapse: collapse; margin: 8px 0; }
th, td { text-align: left; padding: 4px 12px 4px 0; vertical-align: top; border-bottom: 1px solid var(--line); }
th { font-weight: 600; white-space: nowrap; }
td { word-break: break-word; }
code, pre { font: 13px/1.45 ui-monospace, "SFMono-Regular", Menlo, monospace; }
pre { background: #f6f8fa; padding: 12px; overflow-x: auto; border-radius: 6px; }
figure { margin: 12px 0; } figure svg { width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 13px; }
.agree { color: var(--derived); } .disagree { color: var(--warn); font-weight: 600; }
footer { margin-top: 40px; color: var(--muted); font-size: 13px; }
"""


def esc(value) -> str:
    """Text or an attribute value from anywhere, safe in HTML: escaped, and control characters (which
    HTML does not allow) written as visible escapes (:func:`lineage_scanner.printable.printable`)."""
    return html.escape(printable(value), quote=True)


def json_script(element_id: str, data) -> str:
    """Data for a page's script: JSON in a non-executed script element, every ``<`` escaped so that no
    string in it can close the element."""
    text = json.dumps(data, allow_nan=False, default=str).replace("<", "\\u003c")
    return f'<script type="application/json" id="{esc(element_id)}">{text}</script>'


def page(title: str, body: str, extra_css: str = "", script: str = "") -> str:
    """A whole document around ``body`` (already-escaped HTML)."""
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}{extra_css}</style>\n</head>\n<body>\n"
        f"{body}\n<footer>Made by lineage-scanner {esc(__version__)} on {made}. Self-contained: this file "
        "loads nothing from the network.</footer>\n"
        + (f"<script>{script}</script>\n" if script else "")
        + "</body>\n</html>\n"
    )


def table(rows: list[tuple[str, str]]) -> str:
    """A two-column table of (heading, already-escaped HTML) rows."""
    return "<table>" + "".join(f"<tr><th>{esc(h)}</th><td>{v}</td></tr>" for h, v in rows) + "</table>"
