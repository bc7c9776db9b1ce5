"""What the web pages draw, as pure functions: sanitized Markdown, file trees, SVG charts, lineage, comparisons.

Everything here takes user input (names, metadata, descriptions) and returns ``Markup`` that is safe to put in a
page: Markdown is rendered with raw HTML off and then cleaned by nh3 (an allow-list of tags, attributes and URL
schemes); every text in an SVG passes through ``escape``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import nh3
from markdown_it import MarkdownIt
from markupsafe import Markup, escape

from mreg.client.models import ManifestEntry, Version

# CommonMark with tables and strikethrough; raw HTML in the source is shown as text, never passed through.
_MARKDOWN = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable(["table", "strikethrough"])
_ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i",
    "img", "li", "ol", "p", "pre", "s", "strong", "sub", "sup", "table", "tbody", "td", "th", "thead", "tr", "ul",
}  # fmt: skip
_ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title"}, "th": {"align"}, "td": {"align"}}


def markdown(text: str) -> Markup:
    """``text`` (Markdown) as sanitized HTML: no scripts, event handlers, styles or ``javascript:`` URLs."""
    html = _MARKDOWN.render(text or "")
    clean = nh3.clean(
        html,
        tags=_ALLOWED_TAGS,
        attributes=_ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
    return Markup(clean)  # cleaned by nh3 just above


def flatten(metadata: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in metadata.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def lookup(metadata: Mapping[str, Any], dotted: str) -> Any:
    """The value at a dotted key (``train.lr``), or None."""
    value: Any = metadata
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def display_value(value: Any) -> str:
    """A metadata value as one line of text (JSON for anything but a string)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.6g}"  # 0.8999999999999999 reads as 0.9; compare_metadata compares the values themselves
    return json.dumps(value, sort_keys=True)


def numeric(value: Any) -> float | None:
    """A finite number, or None (booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


# --- File tree ---------------------------------------------------------------------------------


@dataclass
class TreeNode:
    """A directory of a manifest: its subdirectories, its files and the bytes under it."""

    name: str
    dirs: dict[str, TreeNode] = field(default_factory=dict)
    files: list[ManifestEntry] = field(default_factory=list)
    size: int = 0
    count: int = 0

    def sorted_dirs(self) -> list[TreeNode]:
        return [self.dirs[k] for k in sorted(self.dirs)]


def file_tree(entries: Iterable[ManifestEntry]) -> TreeNode:
    """The manifest's paths as a tree, each directory with its total size and file count."""
    root = TreeNode("")
    for entry in entries:
        *parents, _ = entry.path.split("/")
        node = root
        node.size += entry.size_bytes
        node.count += 1
        for part in parents:
            node = node.dirs.setdefault(part, TreeNode(part))
            node.size += entry.size_bytes
            node.count += 1
        node.files.append(entry)
    return root


# --- Comparison --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileChange:
    path: str
    change: str  # "added", "removed", "changed" or "same"
    before: ManifestEntry | None
    after: ManifestEntry | None


@dataclass(frozen=True)
class MetadataRow:
    key: str
    before: str
    after: str
    differs: bool


def compare_files(before: Sequence[ManifestEntry], after: Sequence[ManifestEntry]) -> list[FileChange]:
    """Files added, removed and changed (by digest) from ``before`` to ``after``, then the unchanged ones, by path."""
    old = {e.path: e for e in before}
    new = {e.path: e for e in after}
    changes = []
    for path in sorted(old.keys() | new.keys()):
        a, b = old.get(path), new.get(path)
        if a is None:
            kind = "added"
        elif b is None:
            kind = "removed"
        elif (a.sha256, a.size_bytes) != (b.sha256, b.size_bytes):
            kind = "changed"
        else:
            kind = "same"
        changes.append(FileChange(path, kind, a, b))
    order = {"added": 0, "removed": 1, "changed": 2, "same": 3}
    return sorted(changes, key=lambda c: (order[c.change], c.path))


def compare_metadata(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[MetadataRow]:
    """Both versions' metadata, flattened to dotted keys, side by side."""
    a, b = flatten(before), flatten(after)
    return [
        MetadataRow(k, display_value(a.get(k)), display_value(b.get(k)), k not in a or k not in b or a[k] != b[k])
        for k in sorted(a.keys() | b.keys())
    ]


# --- Charts --------------------------------------------------------------------------------------


def numeric_keys(versions: Iterable[Version]) -> list[str]:
    """The dotted metadata keys that hold a number in at least one version, sorted."""
    keys: set[str] = set()
    for version in versions:
        keys.update(k for k, v in flatten(version.metadata).items() if numeric(v) is not None)
    return sorted(keys)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high == low:
        return [low]
    step = (high - low) / (count - 1)
    return [low + i * step for i in range(count)]


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def metric_chart(versions: Sequence[Version], key: str, *, width: int = 760, height: int = 320) -> Markup:
    """An SVG line chart of the metadata ``key`` by version index; versions with aliases get a labelled marker.

    ``versions`` may be in any order; those without a number at ``key`` are left out.
    """
    points = sorted(
        (v.index, value, v)
        for v in versions
        if v.index is not None and (value := numeric(lookup(v.metadata, key))) is not None
    )
    title = escape(key)
    if not points:
        return Markup(
            f'<svg class="chart" role="img" width="{width}" height="60" viewBox="0 0 {width} 60">'
            f'<text x="10" y="30">no version has a number at {title}</text></svg>'
        )
    left, right, top, bottom = 64, 20, 24, 40
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if y0 == y1:
        y0, y1 = y0 - 1, y1 + 1

    def sx(x: float) -> float:
        return left + (0.5 if x0 == x1 else (x - x0) / (x1 - x0)) * (width - left - right)

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * (height - top - bottom)

    parts = [
        f'<svg class="chart" role="img" aria-label="{title} by version" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{title} by version</title>",
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" class="axis"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" class="axis"/>',
    ]
    for tick in _ticks(y0, y1):
        y = sy(tick)
        parts.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(tick)}</text>')
    for tick in sorted({round(t) for t in _ticks(x0, x1, min(6, x1 - x0 + 1))}):
        x = sx(tick)
        parts.append(f'<text x="{x:.1f}" y="{height - bottom + 16}" text-anchor="middle">v{tick}</text>')
    parts.append(
        f'<text x="{(left + width - right) / 2:.0f}" y="{height - 6}" text-anchor="middle" class="label">version</text>'
    )
    polyline = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y, _ in points)
    parts.append(f'<polyline points="{polyline}" class="series"/>')
    for x, y, version in points:
        cx, cy = sx(x), sy(y)
        tip = escape(f"v{x}: {key} = {_fmt(y)}" + (f" ({', '.join(version.aliases)})" if version.aliases else ""))
        shown_aliases = [a for a in version.aliases if a != "latest"] or list(version.aliases)
        if version.aliases:
            parts.append(
                f'<g class="aliased" data-version="v{x}"><circle cx="{cx:.1f}" cy="{cy:.1f}" r="5"><title>{tip}</title>'
                f'</circle><text x="{cx:.1f}" y="{cy - 9:.1f}" text-anchor="middle">{escape(", ".join(shown_aliases))}'
                "</text></g>"
            )
        else:
            parts.append(
                f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="2.5" class="point" data-version="v{x}"><title>{tip}</title>'
                "</circle>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))  # every text above went through escape()


# --- Lineage ------------------------------------------------------------------------------------


def lineage_picture(
    producer: str | None, version: str, links: Sequence[str], consumers: Sequence[str], *, width: int = 900
) -> Markup:
    """run -> version -> registered models' links -> consuming runs, as four columns of boxes with arrows."""
    columns = [
        ("produced by", [producer] if producer else []),
        ("version", [version]),
        ("linked as", list(links)),
        ("used by", list(consumers)),
    ]
    box_w, box_h, gap = 200, 28, 10
    rows = max(1, *(len(items) for _, items in columns))
    height = 40 + rows * (box_h + gap)
    col_x = [10 + i * (width - 20 - box_w) / 3 for i in range(4)]
    parts = [
        f'<svg class="lineage" role="img" aria-label="lineage" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z"/></marker></defs>',
    ]
    centers: list[list[tuple[float, float]]] = []
    for (heading, items), x in zip(columns, col_x, strict=True):
        parts.append(f'<text x="{x:.0f}" y="16" class="label">{escape(heading)}</text>')
        here = []
        for row, item in enumerate(items):
            y = 26 + row * (box_h + gap)
            label = item if len(item) <= 30 else "…" + item[-29:]
            parts.append(
                f'<g class="node"><rect x="{x:.0f}" y="{y}" width="{box_w}" height="{box_h}" rx="4"/>'
                f'<text x="{x + 8:.0f}" y="{y + 18}"><title>{escape(item)}</title>{escape(label)}</text></g>'
            )
            here.append((x, y + box_h / 2))
        if not items:
            parts.append(f'<text x="{x:.0f}" y="44" class="none">none</text>')
        centers.append(here)
    # The run made the version; registered models link it and runs consume it (the version, whatever named it).
    edges = [(centers[0], centers[1]), (centers[1], centers[2]), (centers[1], centers[3])]
    for sources, targets in edges:
        for x1, y1 in sources:
            for x2, y2 in targets:
                parts.append(
                    f'<line x1="{x1 + box_w:.0f}" y1="{y1:.0f}" x2="{x2 - 2:.0f}" y2="{y2:.0f}" '
                    'marker-end="url(#arrow)"/>'
                )
    parts.append("</svg>")
    return Markup("".join(parts))  # every text above went through escape()
