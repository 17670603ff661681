"""Plots of the dashboard as inline SVG, drawn server-side: a line chart (optional interval band and threshold line)
and a bar chart.

Hand-written rather than matplotlib (which the run reports use): a dashboard page is drawn on every request and
every live refresh, on the server's threads, and matplotlib costs tens of milliseconds a figure and keeps
process-wide state (pyplot's figure list, the backend chosen once for the process). These plots need a few dozen
lines of SVG each, render offline with no build step and no script, and every text in them is escaped here.
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass, field

WIDTH, HEIGHT = 520, 200
MARGIN = {"left": 56, "right": 12, "top": 24, "bottom": 34}
THRESHOLD_COLOUR = "#cf222e"
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


@dataclass(frozen=True)
class Line:
    label: str
    points: list[tuple[float, float | None]]  # (x, y); y None: a gap
    colour: str = PALETTE[0]
    band: list[tuple[float, float, float]] = field(default_factory=list)  # (x, low, high): the interval around y


def ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round values spanning [low, high] for the axis (steps of 1, 2, 2.5 or 5 times a power of ten)."""
    if high <= low:
        low, high = low - 0.5, high + 0.5
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(power * factor for factor in (1, 2, 2.5, 5, 10) if power * factor >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [first + index * step for index in range(int((high - first) / step + 1e-9) + 1)]


def label(value: float) -> str:
    if value == 0 or 0.01 <= abs(value) < 10_000:
        return f"{value:.4g}"
    return f"{value:.2g}"


class Frame:
    """Data coordinates -> pixels inside the margins."""

    def __init__(self, xs: list[float], ys: list[float], width: int, height: int,
                 x_range: tuple[float, float] | None = None):
        self.x0, self.x1 = x_range or ((min(xs), max(xs)) if xs else (0.0, 1.0))
        if self.x1 == self.x0:
            self.x0, self.x1 = self.x0 - 1, self.x1 + 1
        low, high = (min(ys), max(ys)) if ys else (0.0, 1.0)
        self.y_ticks = ticks(low, high)
        self.y0, self.y1 = min(low, self.y_ticks[0]), max(high, self.y_ticks[-1])
        if self.y1 == self.y0:
            self.y1 = self.y0 + 1
        self.left, self.right = MARGIN["left"], width - MARGIN["right"]
        self.top, self.bottom = MARGIN["top"], height - MARGIN["bottom"]

    def x(self, value: float) -> float:
        return self.left + (value - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def y(self, value: float) -> float:
        return self.bottom - (value - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)


def line_chart(lines: list[Line], title: str = "", x_label: str = "", y_label: str = "",
               threshold: float | None = None, time_axis: bool = False, width: int = WIDTH,
               height: int = HEIGHT, x_range: tuple[float, float] | None = None) -> str:
    """Lines over a shared x axis, each with its interval band where given, and a dashed threshold line. With
    `time_axis` x is unix time, labelled as clock times; `x_range` fixes the axis (a monitoring window)."""
    xs = [x for line in lines for x, y in line.points if y is not None]
    ys = [y for line in lines for _, y in line.points if y is not None]
    ys += [value for line in lines for _, low, high in line.band for value in (low, high)]
    ys += [threshold] if threshold is not None else []
    frame = Frame(xs, ys, width, height, x_range)
    x_labels = time_labels(frame) if time_axis else [(value, label(value)) for value in ticks(frame.x0, frame.x1)
                                                      if frame.x0 <= value <= frame.x1]
    parts = [axes(frame, title, x_label, y_label, x_labels, width, height)]
    for line in lines:
        parts.append(band(frame, line))
    for line in lines:
        parts.extend(segments(frame, line))
    if threshold is not None:
        y = frame.y(threshold)
        parts.append(f'<line class="threshold" x1="{frame.left}" x2="{frame.right}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="{THRESHOLD_COLOUR}" stroke-dasharray="5 4" stroke-width="1.5"/>'
                     f'<text x="{frame.right - 4}" y="{y - 4:.1f}" text-anchor="end" font-size="10" '
                     f'fill="{THRESHOLD_COLOUR}">threshold {html.escape(label(threshold))}</text>')
    if not xs:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="12" fill="#666">'
                     'no data in this window</text>')
    parts.append(legend(lines, frame))
    return svg(width, height, title, "".join(parts))


def band(frame: Frame, line: Line) -> str:
    if len(line.band) < 1:
        return ""
    upper = [(frame.x(x), frame.y(high)) for x, _, high in line.band]
    lower = [(frame.x(x), frame.y(low)) for x, low, _ in reversed(line.band)]
    if len(line.band) == 1:  # one point: a vertical bar shows its interval
        (x, top), (_, bottom) = upper[0], lower[0]
        return (f'<line class="band" x1="{x:.1f}" x2="{x:.1f}" y1="{top:.1f}" y2="{bottom:.1f}" '
                f'stroke="{line.colour}" stroke-opacity="0.35" stroke-width="6"/>')
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in upper + lower)
    return f'<polygon class="band" points="{points}" fill="{line.colour}" fill-opacity="0.18" stroke="none"/>'


def segments(frame: Frame, line: Line) -> list[str]:
    """The line as paths broken at missing values; a lone point as a dot."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in line.points:
        if y is None:
            runs.append([])
        else:
            runs[-1].append((frame.x(x), frame.y(y)))
    drawn = []
    for run in runs:
        if len(run) == 1:
            drawn.append(f'<circle cx="{run[0][0]:.1f}" cy="{run[0][1]:.1f}" r="3.5" fill="{line.colour}"/>')
        elif run:
            path = " ".join(f"{'M' if index == 0 else 'L'}{x:.1f},{y:.1f}" for index, (x, y) in enumerate(run))
            drawn.append(f'<path class="line" d="{path}" fill="none" stroke="{line.colour}" stroke-width="2"/>')
    return drawn


def axes(frame: Frame, title: str, x_label: str, y_label: str, x_labels: list[tuple[float, str]], width: int,
         height: int) -> str:
    parts = [f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
             f'<text x="{frame.left}" y="15" font-size="12" font-weight="bold">{html.escape(title)}</text>',
             f'<line x1="{frame.left}" x2="{frame.left}" y1="{frame.top}" y2="{frame.bottom}" stroke="#999"/>',
             f'<line x1="{frame.left}" x2="{frame.right}" y1="{frame.bottom}" y2="{frame.bottom}" stroke="#999"/>']
    for value in frame.y_ticks:
        y = frame.y(value)
        parts.append(f'<line x1="{frame.left}" x2="{frame.right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                     f'<text x="{frame.left - 4}" y="{y + 3:.1f}" text-anchor="end" font-size="10">'
                     f'{html.escape(label(value))}</text>')
    for value, text in x_labels:
        parts.append(f'<text x="{frame.x(value):.1f}" y="{frame.bottom + 13}" text-anchor="middle" font-size="10">'
                     f'{html.escape(text)}</text>')
    if x_label:
        parts.append(f'<text x="{(frame.left + frame.right) / 2}" y="{height - 4}" text-anchor="middle" '
                     f'font-size="10" fill="#555">{html.escape(x_label)}</text>')
    if y_label:
        parts.append(f'<text x="12" y="{(frame.top + frame.bottom) / 2}" font-size="10" fill="#555" '
                     f'text-anchor="middle" transform="rotate(-90 12 {(frame.top + frame.bottom) / 2})">'
                     f'{html.escape(y_label)}</text>')
    return "".join(parts)


def time_labels(frame: Frame) -> list[tuple[float, str]]:
    """Five clock times across the axis (with the date when it spans more than a day)."""
    shape = "%H:%M" if frame.x1 - frame.x0 <= 86400 else "%m-%d %H:%M"
    values = [frame.x0 + (frame.x1 - frame.x0) * index / 4 for index in range(5)]
    return [(value, time.strftime(shape, time.localtime(value))) for value in values]


def legend(lines: list[Line], frame: Frame) -> str:
    if len(lines) < 2:
        return ""
    parts, x = [], frame.right
    for line in reversed(lines):
        text = html.escape(line.label)
        x -= 14 + 6 * len(line.label)
        parts.append(f'<rect x="{x:.0f}" y="6" width="10" height="10" fill="{line.colour}"/>'
                     f'<text x="{x + 13:.0f}" y="15" font-size="10">{text}</text>')
    return "".join(parts)


def bar_chart(bars: list[tuple[str, float]], title: str = "", colour: str = PALETTE[0], width: int = WIDTH,
              height: int = HEIGHT) -> str:
    """One bar per (label, value), from zero."""
    values = [value for _, value in bars]
    frame = Frame([0.0, float(max(len(bars), 1))], [0.0, *values], width, height)
    parts = [axes(frame, title, "", "", [], width, height)]
    slot = (frame.right - frame.left) / max(len(bars), 1)
    for index, (name, value) in enumerate(bars):
        top, zero = frame.y(max(value, 0)), frame.y(min(value, 0))
        x = frame.left + index * slot + slot * 0.15
        parts.append(f'<rect class="bar" x="{x:.1f}" y="{top:.1f}" width="{slot * 0.7:.1f}" '
                     f'height="{max(zero - top, 0.5):.1f}" fill="{colour}"><title>{html.escape(name)}: '
                     f'{html.escape(label(value))}</title></rect>'
                     f'<text x="{x + slot * 0.35:.1f}" y="{frame.bottom + 13}" text-anchor="middle" '
                     f'font-size="10">{html.escape(name[:14])}</text>')
    return svg(width, height, title, "".join(parts))


def svg(width: int, height: int, title: str, body: str) -> str:
    return (f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">{body}</svg>')
