"""The web UI over HTTP against real services (both databases): pages, paging, filters, promotion, CSRF, SSE, auth.

The browser-level behaviour (htmx swaps, what a user sees) is in tests/e2e/test_web_ui.py; here each page is fetched
with httpx from a real uvicorn serving the web UI, which calls the real metadata and blob services.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from mreg.client.web import RunningWeb, WebConfig
from mreg.client.web.app import Connections
from tests.web import active_content, alias_form, form_value, push_files, running_web, unique

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def web(servers) -> Iterator[RunningWeb]:
    with running_web(servers.metadata.address, servers.blob.address) as running:
        yield running


@pytest.fixture
def http(web: RunningWeb) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=web.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def catalog(servers, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A project with an artifact of five versions (aliases, tags, metadata, runs) and a registered model."""
    root = tmp_path_factory.mktemp("web-catalog")
    project = unique("web")
    artifact = f"acme/{project}/resnet"
    model = f"acme/{project}/Image Classifier"
    with servers.registry(project=project) as registry:
        for i in range(5):
            push_files(
                registry,
                root,
                artifact,
                {"weights.bin": f"weights {i}".encode(), "config/params.json": "{}", f"notes/{i}.txt": "x" * i},
                metadata={"val_loss": round(1.0 / (i + 1), 3), "train": {"lr": 0.1 * (i + 1)}},
                tags=["fp16"] if i % 2 == 0 else [],
                run=f"train-{i}",
            )
        registry.set_alias(f"{artifact}:v3", "best")
        registry.link(f"{artifact}:v2", model, aliases=["production"], create=True, description="# Card\n\n**Top-1**")
        registry.record_run_inputs(f"acme/{project}/evaluate", [f"{artifact}:v2"])
    return {"project": project, "artifact": artifact, "model": model}


def path_of(name: str, kind: str = "a") -> str:
    entity, project, collection = name.split("/")
    return f"/{kind}/{entity}/{project}/{collection.replace(' ', '%20')}"


def test_navigation_from_entity_to_a_version_shows_what_each_level_holds(http: httpx.Client, catalog) -> None:
    project = catalog["project"]
    entity_page = http.get("/e/acme")
    assert entity_page.status_code == 200
    assert f'href="/p/acme/{project}"' in entity_page.text

    project_page = http.get(f"/p/acme/{project}")
    assert project_page.status_code == 200
    artifacts = project_page.text[project_page.text.index('id="artifacts"') : project_page.text.index('id="models"')]
    assert ">resnet</a>" in artifacts and "<td>5</td>" in artifacts and ">v4</a>" in artifacts
    assert ">Image Classifier</a>" in project_page.text

    artifact_page = http.get(path_of(catalog["artifact"]))
    assert artifact_page.status_code == 200
    rows = re.findall(r'<tr data-version="(v\d+)">', artifact_page.text)
    assert rows == ["v4", "v3", "v2", "v1", "v0"]

    version_page = http.get(path_of(catalog["artifact"]) + "/v/2")
    assert version_page.status_code == 200
    text = version_page.text
    assert f"mreg pull '{catalog['artifact']}:v2' ./resnet" in text
    assert "weights.bin" in text and "params.json" in text and "config/" in text
    assert "train.lr" in text and "val_loss" in text
    assert f"acme/{catalog['project']}/train-2" in text  # the producing run
    assert f"acme/{catalog['project']}/evaluate" in text  # a consuming run
    assert "Image Classifier:v0</a>" in text  # the registered model it is linked into
    assert '<svg class="lineage"' in text


def test_version_pages_follow_keyset_page_tokens_through_every_version(http: httpx.Client, catalog) -> None:
    seen: list[str] = []
    url = path_of(catalog["artifact"]) + "?size=2"
    for _ in range(10):
        page = http.get(url)
        assert page.status_code == 200
        seen += re.findall(r'<tr data-version="(v\d+)">', page.text)
        following = re.search(r'<a href="\?([^"]+)" id="next-page">', page.text)
        if not following:
            break
        url = path_of(catalog["artifact"]) + "?" + following.group(1).replace("&amp;", "&")
        assert "size=2" in url or "page=" in url
    assert seen[:2] == ["v4", "v3"]
    assert sorted(seen) == sorted({"v0", "v1", "v2", "v3", "v4"})


def test_a_filter_selects_versions_and_metadata_columns_sort(http: httpx.Client, catalog) -> None:
    page = http.get(path_of(catalog["artifact"]), params={"filter": 'tag = "fp16"', "cols": "val_loss"})
    assert page.status_code == 200
    assert re.findall(r'<tr data-version="(v\d+)">', page.text) == ["v4", "v2", "v0"]
    assert "<th><a" in page.text and ">val_loss</a></th>" in page.text and "<td>0.2</td>" in page.text

    ordered = http.get(path_of(catalog["artifact"]), params={"order": "metadata.val_loss asc", "cols": "val_loss"})
    assert re.findall(r'<tr data-version="(v\d+)">', ordered.text) == ["v4", "v3", "v2", "v1", "v0"]
    ordered = http.get(path_of(catalog["artifact"]), params={"order": "metadata.val_loss desc"})
    assert re.findall(r'<tr data-version="(v\d+)">', ordered.text) == ["v0", "v1", "v2", "v3", "v4"]


def test_a_wrong_filter_shows_the_services_message_and_its_position(http: httpx.Client, catalog) -> None:
    page = http.get(path_of(catalog["artifact"]), params={"filter": "metadata.val_loss < 0.5 AND"})
    assert page.status_code == 400
    error = page.text[page.text.index('id="filter-error"') :]
    assert "unexpected end at position 28" in error
    caret = re.search(r'<pre class="caret">([^\n]*)\n( *)\^ position 28</pre>', error)
    assert caret and len(caret.group(2)) == 27
    assert 'value="metadata.val_loss &lt; 0.5 AND"' in page.text  # the filter stays in the box to fix


def test_the_chart_plots_a_metadata_key_by_version_and_marks_aliased_versions(http: httpx.Client, catalog) -> None:
    page = http.get(path_of(catalog["artifact"]) + "/chart", params={"key": "val_loss"})
    assert page.status_code == 200
    svg = page.text[page.text.index("<svg") : page.text.index("</svg>")]
    assert svg.count('data-version="v') == 5
    assert re.search(r'<g class="aliased" data-version="v3">.*?>best</text>', svg)
    assert '<option value="train.lr"' in page.text  # every numeric key can be charted


def test_compare_shows_metadata_side_by_side_and_files_changed_by_digest(http: httpx.Client, catalog) -> None:
    page = http.get(path_of(catalog["artifact"]) + "/compare", params={"a": "1", "b": "3"})
    assert page.status_code == 200
    assert "1 added, 1 removed, 1 changed, 1 unchanged." in page.text
    assert re.search(r'<tr class="added" data-path="notes/3.txt">', page.text)
    assert re.search(r'<tr class="removed" data-path="notes/1.txt">', page.text)
    assert re.search(r'<tr class="changed" data-path="weights.bin">', page.text)
    assert re.search(r'<tr class="differs"><td>val_loss</td><td>0.5</td><td>0.25</td></tr>', page.text)


def test_the_registered_model_page_shows_its_card_links_and_alias_history(http: httpx.Client, catalog, servers) -> None:
    with servers.registry(project=catalog["project"]) as registry:
        registry.link(f"{catalog['artifact']}:v4", catalog["model"])
        registry.set_alias(f"{catalog['model']}:v1", "staging")
    page = http.get(path_of(catalog["model"], "m"))
    assert page.status_code == 200
    assert "<h1>Card</h1>" in page.text and "<strong>Top-1</strong>" in page.text
    assert f"{catalog['artifact']}:v2</a>" in page.text and f"{catalog['artifact']}:v4</a>" in page.text
    history = page.text[page.text.index('data-alias="staging"><thead>') :]
    history = history[: history.index("</table>")]
    assert "<td>—</td>\n<td>v1</td><td>alias.set</td>" in history
    assert "<td>mreg-web</td>" not in history  # moved by the test's own client, not through the web UI


def test_promote_moves_an_alias_only_from_the_version_the_page_showed(http: httpx.Client, catalog, servers) -> None:
    artifact_path = path_of(catalog["artifact"])
    page = http.get(artifact_path)
    fields = alias_form(page.text, "best")
    assert fields["expected"] == "3"

    moved = http.post(artifact_path + "/promote", data={**fields, "target": "4"})
    assert moved.status_code == 303
    after = http.get(artifact_path)
    assert 'class="flash ok"' in after.text and "best moved from v3 to v4." in after.text
    history = after.text[after.text.index('<table class="history" data-alias="best">') :]
    body = history.index("<tbody>")
    newest = history[body : history.index("</tr>", body)]
    assert "<td>mreg-web</td>\n<td>v3</td>\n<td>v4</td><td>alias.set</td>" in newest  # who moved it, from, to

    # Another client moves it first; the page's form still says v4.
    stale = alias_form(after.text, "best")
    with servers.registry(project=catalog["project"]) as registry:
        registry.set_alias(f"{catalog['artifact']}:v1", "best", expected_index=4)
    refused = http.post(artifact_path + "/promote", data={**stale, "target": "0"})
    assert refused.status_code == 303
    conflict = http.get(artifact_path)
    assert 'class="flash conflict"' in conflict.text
    assert "best was changed by" in conflict.text and "now names v1, not v4 as this page showed" in conflict.text
    with servers.registry(project=catalog["project"]) as registry:
        assert registry.get_artifact(catalog["artifact"]).aliases["best"] == 1  # not overwritten


def test_promote_with_an_expected_version_beyond_int64_is_refused_as_a_bad_form(
    http: httpx.Client, catalog, servers
) -> None:
    artifact_path = path_of(catalog["artifact"])
    fields = alias_form(http.get(artifact_path).text, "best")
    with servers.registry(project=catalog["project"]) as registry:
        before = registry.get_artifact(catalog["artifact"]).aliases["best"]
    refused = http.post(artifact_path + "/promote", data={**fields, "target": "0", "expected": "9" * 20})
    assert refused.status_code == 303
    assert 'class="flash error"' in http.get(artifact_path).text
    with servers.registry(project=catalog["project"]) as registry:
        assert registry.get_artifact(catalog["artifact"]).aliases["best"] == before


def test_promote_without_the_csrf_token_is_refused_and_changes_nothing(http: httpx.Client, catalog, servers) -> None:
    artifact_path = path_of(catalog["artifact"])
    fields = alias_form(http.get(artifact_path).text, "best")
    with servers.registry(project=catalog["project"]) as registry:
        before = registry.get_artifact(catalog["artifact"]).aliases["best"]
    for forged in ({**fields, "csrf": ""}, {**fields, "csrf": "x" * 43}):
        refused = http.post(artifact_path + "/promote", data={**forged, "target": "0"})
        assert refused.status_code == 403
    # Another browser (no session cookie) with this page's token is refused too.
    with httpx.Client(base_url=str(http.base_url), timeout=30) as stranger:
        assert stranger.post(artifact_path + "/promote", data={**fields, "target": "0"}).status_code == 403
    with servers.registry(project=catalog["project"]) as registry:
        assert registry.get_artifact(catalog["artifact"]).aliases["best"] == before


def test_hostile_metadata_tags_and_markdown_are_shown_as_text(http: httpx.Client, servers, tmp_path: Path) -> None:
    project = unique("xss")
    artifact = f"acme/{project}/evil"
    script = "<script>window.__pwned = 1</script>"
    description = (
        f"# Hello {script}\n\n<img src=x onerror=alert(1)>\n\n[click me](javascript:alert(1))\n\n"
        '<a href="javascript:alert(2)">raw</a> <iframe src="https://example.com"></iframe>'
    )
    with servers.registry(project=project) as registry:
        push_files(
            registry,
            tmp_path,
            artifact,
            {"<img src=x onerror=alert(3)>.bin": b"x"},
            metadata={script: f"<img src=x onerror=alert(4)> {script}", "loss": 1},
            description=description,
        )
        push_files(registry, tmp_path, artifact, {"b.bin": b"y"}, metadata={"loss": 2})
    pages = [
        http.get(path_of(artifact) + "/v/0"),
        http.get(path_of(artifact), params={"cols": script}),
        http.get(path_of(artifact) + "/compare", params={"a": "0", "b": "1"}),
        http.get(path_of(artifact) + "/chart", params={"key": script}),
    ]
    for page in pages:
        assert page.status_code == 200, page.text
        html = page.text
        assert "<script>window.__pwned" not in html
        assert active_content(html) == []
        assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in html
        assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "<h1>Hello &lt;script&gt;" in pages[0].text  # the Markdown still renders


def test_events_stream_a_commit_under_the_page_s_prefix(web: RunningWeb, servers, catalog, tmp_path: Path) -> None:
    streams_before = servers.metadata.admission.active
    received: list[dict] = []
    connected = threading.Event()

    def listen() -> None:
        with (
            httpx.Client(base_url=web.url, timeout=httpx.Timeout(20, read=20)) as client,
            client.stream("GET", "/events", params={"prefix": catalog["artifact"]}) as stream,
        ):
            assert stream.headers["content-type"].startswith("text/event-stream")
            event = ""
            for line in stream.iter_lines():
                if line.startswith(": connected"):
                    connected.set()
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "change":
                    received.append(json.loads(line[6:]))
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert connected.wait(15)
    time.sleep(0.5)  # the relay's Watch stream is opened right after the response starts
    assert servers.metadata.admission.active > streams_before  # the web UI follows the Watch feed for the page
    with servers.registry(project=catalog["project"]) as registry:
        push_files(registry, tmp_path, f"acme/{catalog['project']}/other", {"a": b"1"})  # not under the prefix
        push_files(registry, tmp_path, catalog["artifact"], {"new.bin": b"new"})
    listener.join(20)
    assert received, "no change event arrived"
    assert received[0]["resource"].startswith(catalog["artifact"])
    # The page went away: the web UI ends its Watch stream at once instead of holding a stream slot.
    deadline = time.monotonic() + 3
    while servers.metadata.admission.active > streams_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert servers.metadata.admission.active <= streams_before


# --- with authentication on ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured_web(secured) -> Iterator[RunningWeb]:
    with running_web(secured.metadata.address, secured.blob.address) as running:
        yield running


@pytest.fixture(scope="module")
def secured_catalog(secured, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two projects of one entity, each with an artifact, pushed by a writer; tokens scoped to one project."""
    root = tmp_path_factory.mktemp("web-secured")
    mine, theirs = unique("mine"), unique("theirs")
    writer = secured.create_token("web-writer", "writer", "acme")
    with secured.registry(writer, project=mine) as registry:
        push_files(registry, root, f"acme/{mine}/model", {"a.bin": b"mine"}, metadata={"secret": "mine"})
        push_files(registry, root, f"acme/{theirs}/model", {"a.bin": b"theirs"}, metadata={"secret": "THEIRS-42"})
    return {
        "mine": mine,
        "theirs": theirs,
        "reader": secured.create_token("web-reader", "reader", f"acme/{mine}"),
    }


def sign_in(client: httpx.Client, token: str, target: str = "/") -> httpx.Response:
    form = client.get("/signin", params={"next": target})
    return client.post("/signin", data={"csrf": form_value(form.text, "csrf"), "next": target, "token": token})


def test_with_auth_pages_ask_to_sign_in_and_a_bad_token_is_refused(secured_web: RunningWeb, secured_catalog) -> None:
    with httpx.Client(base_url=secured_web.url, timeout=30) as client:
        target = f"/a/acme/{secured_catalog['mine']}/model"
        redirect = client.get(target)
        assert redirect.status_code == 303
        assert redirect.headers["location"].startswith("/signin?next=")
        refused = sign_in(client, "mreg_not-a-real-token", target)
        assert refused.status_code == 401 and "not valid" in refused.text
        assert client.get(target).status_code == 303


def test_sign_in_sets_a_strict_httponly_session_and_a_scoped_token_sees_only_its_project(
    secured_web: RunningWeb, secured_catalog
) -> None:
    mine, theirs = secured_catalog["mine"], secured_catalog["theirs"]
    with httpx.Client(base_url=secured_web.url, timeout=30) as client:
        signed_in = sign_in(client, secured_catalog["reader"], f"/a/acme/{mine}/model")
        assert signed_in.status_code == 303 and signed_in.headers["location"] == f"/a/acme/{mine}/model"
        cookie = signed_in.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie

        assert client.get(f"/a/acme/{mine}/model").status_code == 200
        assert "mine" in client.get(f"/a/acme/{mine}/model/v/0").text

        entity = client.get("/e/acme")
        assert f"/p/acme/{mine}" in entity.text and theirs not in entity.text
        for path in (f"/p/acme/{theirs}", f"/a/acme/{theirs}/model", f"/a/acme/{theirs}/model/v/0"):
            page = client.get(path)
            assert page.status_code in (403, 404), path
            assert "THEIRS-42" not in page.text

        # A reader may look but not promote: the service refuses, and the page says so.
        page = client.get(f"/a/acme/{mine}/model")
        csrf = form_value(page.text, "csrf", "new-alias")
        client.post(
            f"/a/acme/{mine}/model/promote", data={"csrf": csrf, "alias": "prod", "target": "0", "expected": "none"}
        )
        assert "Not moved: PERMISSION_DENIED" in client.get(f"/a/acme/{mine}/model").text


def test_a_live_refresh_after_the_session_ended_sends_the_whole_page_to_sign_in(
    secured_web: RunningWeb, secured_catalog
) -> None:
    page = f"/a/acme/{secured_catalog['mine']}/model"
    with httpx.Client(base_url=secured_web.url, timeout=30) as client:
        refresh = client.get(
            page + "?fragment=versions",
            headers={"HX-Request": "true", "HX-Current-URL": f"{secured_web.url}{page}?filter=x"},
        )
    assert refresh.status_code == 204
    assert refresh.headers["hx-redirect"] == "/signin?" + urlencode({"next": f"{page}?filter=x"})


def test_a_watch_stream_cancelled_from_another_thread_ends_at_once(servers) -> None:
    with servers.registry() as registry:
        stream = registry.open_watch(from_now=True, resource_prefix="acme/nothing-here")
        updates: list = []
        reader = threading.Thread(target=lambda: updates.extend(stream), daemon=True)
        reader.start()
        time.sleep(0.3)
        began = time.monotonic()
        stream.cancel()
        reader.join(5)
        assert not reader.is_alive() and time.monotonic() - began < 2
        assert all(update.event is None for update in updates)  # heartbeats only, and no error raised


def test_a_connection_evicted_from_the_pool_keeps_serving_the_request_using_it(servers, catalog) -> None:
    connections = Connections(WebConfig(servers.metadata.address, servers.blob.address, timeout=5), size=1)
    try:
        in_use = connections.registry(None)
        connections.registry("another-users-token")  # evicts the first
        assert in_use.get_artifact(catalog["artifact"]).version_count >= 5
    finally:
        connections.close()
