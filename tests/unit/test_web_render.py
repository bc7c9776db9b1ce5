"""What the web UI draws from user input: sanitized Markdown, escaped SVG, file trees, comparisons, redirects."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest

from mreg.client.models import ManifestEntry, Version
from mreg.client.web import render
from mreg.client.web.app import _safe_next, _sort_link, url_of
from tests.web import active_content


def version(index: int, metadata: dict, aliases: tuple[str, ...] = ()) -> Version:
    return Version(
        name=f"acme/vision/resnet:v{index}",
        uid=f"u{index}",
        artifact="acme/vision/resnet",
        type="model",
        index=index,
        state="committed",
        digest="d",
        size_bytes=1,
        file_count=1,
        aliases=aliases,
        description="",
        tags=(),
        metadata=metadata,
        create_time=datetime(2026, 1, 1, tzinfo=UTC),
        commit_time=None,
        run=None,
        manifest=(),
    )


@pytest.mark.parametrize(
    "source",
    [
        "<script>window.x = 1</script>",
        "<img src=x onerror=alert(1)>",
        "[a](javascript:alert(1))",
        "[a](JaVaScRiPt:alert(1))",
        "[a](data:text/html;base64,PHNjcmlwdD4=)",
        "![i](javascript:alert(1))",
        '<a href="javascript:alert(1)">x</a>',
        "<iframe src=https://example.com></iframe>",
        "<svg onload=alert(1)>",
        "<div style=\"background:url('javascript:alert(1)')\">x</div>",
        "[a](<javascript:alert(1)>)",
    ],
)
def test_markdown_never_lets_through_anything_that_runs(source: str) -> None:
    html = str(render.markdown(source))
    assert active_content(html) == []
    assert "<script" not in html and "<iframe" not in html
    assert not re.search(r"<[a-z][^>]*\sstyle=", html)


def test_markdown_keeps_formatting_links_tables_and_code() -> None:
    html = str(
        render.markdown(
            "# Card\n\n**bold** *em* `code` [site](https://example.com)\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
        )
    )
    assert "<h1>Card</h1>" in html and "<strong>bold</strong>" in html and "<code>code</code>" in html
    assert '<a href="https://example.com" rel="noopener noreferrer nofollow">site</a>' in html
    assert "<table>" in html and "<td>2</td>" in html


def test_the_chart_escapes_keys_and_aliases_and_stays_well_formed_svg() -> None:
    key = '<script>"&'
    versions = [version(i, {key: float(i), "other": "text"}, ("best",) if i == 1 else ()) for i in range(3)]
    svg = str(render.metric_chart(versions, key))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    root = ET.fromstring(svg)  # well formed: every text was escaped
    assert root.tag.endswith("svg")
    assert svg.count('data-version="v') == 3
    assert '<g class="aliased" data-version="v1">' in svg


def test_the_chart_skips_versions_without_a_number_and_says_when_none_has_one() -> None:
    versions = [version(0, {"loss": "high"}), version(1, {"loss": True}), version(2, {"loss": 0.5})]
    assert str(render.metric_chart(versions, "loss")).count('data-version="v') == 1
    assert "no version has a number" in str(render.metric_chart(versions[:2], "loss"))
    assert render.numeric_keys([version(0, {"a": {"b": 1}, "c": "x", "d": False})]) == ["a.b"]


def test_compare_files_reports_added_removed_and_changed_by_digest() -> None:
    before = [ManifestEntry("a", "1" * 64, 1), ManifestEntry("b", "2" * 64, 2), ManifestEntry("c", "3" * 64, 3)]
    after = [ManifestEntry("a", "1" * 64, 1), ManifestEntry("b", "9" * 64, 2), ManifestEntry("d", "4" * 64, 4)]
    changes = {c.path: c.change for c in render.compare_files(before, after)}
    assert changes == {"a": "same", "b": "changed", "c": "removed", "d": "added"}


def test_compare_metadata_flattens_nested_keys_side_by_side() -> None:
    rows = render.compare_metadata({"train": {"lr": 0.1}, "x": 1}, {"train": {"lr": 0.2}, "y": [1]})
    assert [(r.key, r.before, r.after, r.differs) for r in rows] == [
        ("train.lr", "0.1", "0.2", True),
        ("x", "1", "", True),
        ("y", "", "[1]", True),
    ]


def test_the_file_tree_sums_sizes_and_counts_per_directory() -> None:
    tree = render.file_tree(
        [ManifestEntry("a/b/c.bin", "x", 10), ManifestEntry("a/d.bin", "y", 5), ManifestEntry("top", "z", 1)]
    )
    assert (tree.size, tree.count) == (16, 3)
    a = tree.dirs["a"]
    assert (a.size, a.count, [f.path for f in a.files]) == (15, 2, ["a/d.bin"])
    assert a.dirs["b"].files[0].path == "a/b/c.bin"


def test_sign_in_redirects_only_to_paths_on_this_site() -> None:
    assert _safe_next("/a/acme/p/x?filter=1") == "/a/acme/p/x?filter=1"
    for hostile in ("https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:alert(1)", "", None):
        assert _safe_next(hostile) == "/"


def test_sort_links_toggle_direction_and_keep_the_filter() -> None:
    assert _sort_link("index", "", {"filter": "x"}) == "filter=x&order=index+asc"
    assert _sort_link("index", "index asc", {}) == "order=index+desc"
    assert _sort_link("metadata.loss", "index desc", {}) == "order=metadata.loss+desc"
    assert _sort_link("metadata.loss", "metadata.loss desc", {}) == "order=metadata.loss+asc"


def test_urls_quote_names_with_spaces_and_dots() -> None:
    assert url_of("m", "acme/model-registry/Image Classifier") == "/m/acme/model-registry/Image%20Classifier"
    assert url_of("a", "acme/vision/res.net:v3", 3) == "/a/acme/vision/res.net/v/3"
