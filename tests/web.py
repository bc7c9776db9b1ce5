"""Helpers of the web UI tests: a running web UI over given services, small versions to push, form fields."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from mreg.client import Registry
from mreg.client.models import Version
from mreg.client.web import RunningWeb, WebConfig, start


@contextmanager
def running_web(metadata_addr: str, blob_addr: str) -> Iterator[RunningWeb]:
    """The web UI on a free loopback port, as a client of the two services; stopped on exit."""
    web = start(WebConfig(metadata_addr, blob_addr, session_secret=uuid.uuid4().hex), "127.0.0.1:0")
    try:
        yield web
    finally:
        web.stop()


def push_files(registry: Registry, root: Path, ref: str, files: dict[str, bytes | str], **kwargs: Any) -> Version:
    """Pushes a directory holding ``files`` (relative path -> content) to ``ref``; returns the version."""
    directory = root / uuid.uuid4().hex
    for path, content in files.items():
        target = directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            target.write_text(content)
        else:
            target.write_bytes(content)
    return registry.push(directory, ref, **kwargs).version


def unique(prefix: str) -> str:
    """A project (or other) name no other test uses on the shared servers."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def form_value(html: str, name: str, form_id: str | None = None) -> str:
    """The value of the first hidden input ``name`` (in the form with ``form_id``, if given)."""
    if form_id is not None:
        start = html.index(f'id="{form_id}"')
        html = html[html.rindex("<form", 0, start) :]
    match = re.search(rf'<input type="hidden" name="{re.escape(name)}" value="([^"]*)"', html)
    assert match, f"no hidden input {name!r}"
    return match.group(1)


def alias_form(html: str, alias: str) -> dict[str, str]:
    """The hidden fields of the promote form of ``alias`` (its CSRF token and the index the page shows)."""
    start = html.index(f'<tr data-alias="{alias}">')
    row = html[start : html.index("</tr>", start)]
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', row))
    assert {"csrf", "alias", "expected"} <= fields.keys(), row
    return fields


class _ActiveContent(HTMLParser):
    """Collects what in a page could run code: event handler attributes, javascript: URLs, scripts, frames."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name.startswith("on"):
                self.found.append(f"<{tag} {name}=...>")
            if name in ("href", "src", "action", "formaction", "xlink:href") and (
                value or ""
            ).strip().lower().startswith(("javascript:", "data:text/html", "vbscript:")):
                self.found.append(f"<{tag} {name}={value}>")
        if tag == "script" and not (dict(attrs).get("src") or "").startswith("/static/"):
            self.found.append("<script> not from /static/")
        if tag in ("iframe", "object", "embed", "frame"):
            self.found.append(f"<{tag}>")


def active_content(html: str) -> list[str]:
    """Everything in ``html`` that a browser would run or load as a page: must be empty for user input."""
    parser = _ActiveContent()
    parser.feed(html)
    return parser.found
