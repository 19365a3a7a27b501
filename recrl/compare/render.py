"""Rendering ``recrl compare``'s page: :class:`Section` values as Markdown and as a self-standing
HTML page (no scripts, no network; figures linked by relative path)."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from recrl.compare.tables import Table
from recrl.report import markdown_table


@dataclass
class Section:
    """One part of the page: a heading, notes, optional figure (a PNG file name) and tables."""

    title: str
    notes: list[str] = field(default_factory=list)
    figure: str | None = None
    tables: list[tuple[str, Table]] = field(default_factory=list)  # (caption, table)


def render_markdown(title: str, sections: Sequence[Section]) -> str:
    """The Markdown page: every section's notes, figure (a link to the PNG next to the page) and tables."""
    lines = [f"# {title}"]
    for section in sections:
        lines += ["", f"## {section.title}"]
        for note in section.notes:
            lines += ["", note]
        if section.figure:
            lines += ["", f"![{section.title}]({section.figure})"]
        for caption, table in section.tables:
            if caption:
                lines += ["", f"**{caption}**"]
            lines += ["", markdown_table(table.header, table.rows, right_from=table.text_columns)]
    return "\n".join(lines) + "\n"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: bold; padding: 0.3em 0; }
img { max-width: 100%; height: auto; display: block; margin: 0.8em 0; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


def _inline_html(text: str) -> str:
    """Escape ``text`` for HTML and turn Markdown ```code``` spans into ``<code>``."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _html_table(caption: str, table: Table) -> str:
    """An HTML table: the text columns left-aligned, the number columns right-aligned."""
    header, rows, text_columns = table
    out = ["<table>"]
    if caption:
        out.append(f"<caption>{_inline_html(caption)}</caption>")
    out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = [f'<td{" class=num" if i >= text_columns else ""}>{html.escape(c)}</td>'
                 for i, c in enumerate(row)]
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join([*out, "</table>"])


def render_html(title: str, sections: Sequence[Section]) -> str:
    """A self-standing HTML page (no scripts, no network) with the same content as the Markdown page;
    figures are ``<img>`` elements with relative ``src``, so the page needs only its folder."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        body += [f"<p>{_inline_html(note)}</p>" for note in section.notes]
        if section.figure:
            body.append(f'<a href="{html.escape(section.figure)}"><img src="{html.escape(section.figure)}" '
                        f'alt="{html.escape(section.title)}"></a>')
        body += [_html_table(caption, table) for caption, table in section.tables]
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no favicon request
        f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
        *body, "</body>", "</html>", ""])

