"""Self-contained HTML reports: one page, plots embedded as SVG, no network, no JavaScript.

Shared by the data report (data doctor) and the evaluation report, so both look and work alike.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass, field
from typing import Any, Iterable

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5rem 0; } td, th { border: 1px solid #ccc; padding: 0.25rem 0.6rem; }
th { background: #f3f3f3; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.good { color: #1a7f37; } .bad { color: #cf222e; } figure { margin: 0.5rem 0; }
pre { background: #f6f8fa; padding: 0.5rem; white-space: pre-wrap; } mark { background: #fff3b0; }
td pre { margin: 0; max-width: 24rem; max-height: 14rem; overflow: auto; font-size: 0.85rem; overflow-wrap: anywhere; }
td { vertical-align: top; } .verdict { font-size: 1.2rem; font-weight: bold; padding: 0.5rem 0.8rem; }
.verdict.good { background: #dafbe1; } .verdict.bad { background: #ffebe9; } .note { color: #666; }
"""


class Markup(str):
    """HTML built by tunelab (its parts already escaped): `table` puts it in a cell as is."""


@dataclass
class Section:
    title: str
    parts: list[str] = field(default_factory=list)

    def add(self, fragment: str) -> "Section":
        self.parts.append(fragment)
        return self


def page(title: str, sections: Iterable[Section], subtitle: str = "") -> str:
    body = "".join(
        f'<section><h2>{html.escape(s.title)}</h2>{"".join(s.parts)}</section>' for s in sections
    )
    sub = f"<p>{html.escape(subtitle)}</p>" if subtitle else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{sub}{body}</body></html>")


def table(headers: list[str], rows: Iterable[Iterable[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(value) for value in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def cell(value: Any) -> str:
    if isinstance(value, Markup):
        return f"<td>{value}</td>"
    if isinstance(value, bool) or value is None:
        return f"<td>{html.escape(str(value))}</td>"
    if isinstance(value, int):
        return f"<td class='num'>{value:,}</td>"
    if isinstance(value, float):
        return f"<td class='num'>{value:.4g}</td>"
    return f"<td>{html.escape(str(value))}</td>"


def paragraph(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def svg(figure: Any, caption: str = "") -> str:
    """A matplotlib figure as inline SVG (closed afterwards, so reports never leak figures)."""
    import matplotlib
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    # Text as <text> elements, not outlines: smaller pages, and labels a reader (or a test) can search and copy.
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    markup = text[text.index("<svg"):]
    caption_html = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f"<figure class='plot'>{markup}{caption_html}</figure>"


def new_figure(width: float = 6.0, height: float = 3.2, columns: int = 1) -> tuple[Any, Any]:
    """A figure and axes (a row of `columns` axes) on the non-interactive backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, columns, figsize=(width, height))
