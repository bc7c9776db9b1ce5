"""How fast the web UI pages an artifact of 10 000 versions: ``python -m tests.bench_web [--versions N]``.

Starts both services in-process (SQLite in a temporary directory, or ``--database-url``), commits N versions
of one artifact (each with metadata, through CreateVersion/CommitVersion with one shared blob, so the bench
measures the metadata path and not uploads), starts the web UI and fetches versions pages over HTTP: the first
page, pages deep in the keyset chain, a filtered page and a page ordered by a metadata key. It prints, per kind of
page, the median and worst server time (the page's own Server-Timing, i.e. the calls to the services and the
rendering) and the wall time seen by a keep-alive HTTP client, as JSON on stdout. The goal is under 300 ms server time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mreg.blob.v1 import blob_service_pb2 as blob_pb
from mreg.blob_service import server as blob_server
from mreg.blob_service.config import BlobConfig
from mreg.client import Registry
from mreg.client.web import WebConfig, start
from mreg.metadata.v1 import metadata_service_pb2 as pb
from mreg.metadata_service import server as metadata_server
from mreg.metadata_service.config import MetadataConfig
from tests.helpers import digest_of

ARTIFACT = "bench/web/big"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fill(registry: Registry, versions: int, clients: int = 4) -> None:
    content = b"bench web blob"
    digest = digest_of(content)
    registry.blobs.BatchUpdateBlobs(
        blob_pb.BatchUpdateBlobsRequest(requests=[blob_pb.BatchUpdateBlobsRequest.Request(digest=digest, data=content)])
    )

    def commit(i: int) -> None:
        create = pb.CreateVersionRequest(parent=ARTIFACT, type="model")
        create.metadata.update({"step": i, "val_loss": 1.0 / (1 + i % 997), "accuracy": (i % 1000) / 1000})
        create.tags.append("fp16" if i % 3 == 0 else "fp32")
        pending = registry._call(registry.metadata.CreateVersion, create).version
        manifest = [pb.ManifestEntry(path=f"step-{i}/weights.bin", digest=digest)]
        registry._call(registry.metadata.CommitVersion, pb.CommitVersionRequest(uid=pending.uid, manifest=manifest))

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        for done, _ in enumerate(pool.map(commit, range(versions)), start=1):
            if done % 1000 == 0:
                log(f"  {done} versions committed ({done / (time.monotonic() - started):.0f}/s)")


@dataclass
class Page:
    status_code: int
    headers: dict[str, str]
    text: str


class Client:
    """A keep-alive HTTP/1.1 client from the standard library, as a browser keeps its connection."""

    def __init__(self, host: str, port: int) -> None:
        self.connection = http.client.HTTPConnection(host, port, timeout=60)

    def get(self, url: str) -> Page:
        self.connection.request("GET", url)
        response = self.connection.getresponse()
        body = response.read().decode()
        return Page(response.status, {k.lower(): v for k, v in response.getheaders()}, body)

    def close(self) -> None:
        self.connection.close()


def server_ms(response: Page) -> float:
    match = re.search(r"app;dur=([\d.]+)", response.headers.get("server-timing", ""))
    assert match, "no Server-Timing header"
    return float(match.group(1))


def measure(client: Client, label: str, urls: list[str]) -> dict[str, Any]:
    server, wall = [], []
    for url in urls:
        began = time.perf_counter()
        response = client.get(url)
        wall.append((time.perf_counter() - began) * 1000)
        assert response.status_code == 200, (url, response.status_code, response.text[:500])
        assert 0 < response.text.count("<tr data-version=") <= 50, url
        server.append(server_ms(response))
    result = {
        "pages": len(urls),
        "server_ms_median": round(statistics.median(server), 1),
        "server_ms_max": round(max(server), 1),
        "wall_ms_median": round(statistics.median(wall), 1),
    }
    log(f"  {label}: {result}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=int, default=10_000)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mreg-bench-web-"))
    os.environ.setdefault("MREG_CACHE_DIR", str(work / "cache"))
    blobs = blob_server.start(BlobConfig(listen="127.0.0.1:0", store=str(work / "blobs")))
    metadata = metadata_server.start(
        MetadataConfig(
            listen="127.0.0.1:0",
            database_url=args.database_url or f"sqlite:///{work / 'metadata.db'}",
            blob_addr=blobs.address,
        )
    )
    web = start(WebConfig(metadata.address, blobs.address), "127.0.0.1:0")
    try:
        with Registry.connect(metadata.address, blobs.address, use_cache=False) as registry:
            log(f"committing {args.versions} versions of {ARTIFACT}")
            fill(registry, args.versions)
            registry.set_alias(f"{ARTIFACT}:v{args.versions // 2}", "best")
        base = "/a/" + ARTIFACT
        client = Client(web.host, web.port)
        try:
            client.get(base)  # warm up connections and templates
            # Follow the keyset chain up to 40 pages deep (2 000 versions), timing every page.
            chain, url = [], base
            for _ in range(min(40, args.versions // 50 - 1)):
                chain.append(url)
                found = re.search(r'href="\?([^"]+)" id="next-page"', client.get(url).text)
                assert found
                url = base + "?" + found.group(1).replace("&amp;", "&")
            results = {
                "versions": args.versions,
                "database": "postgresql" if "postgresql" in args.database_url else "sqlite",
                "first_page": measure(client, "first page", [base] * 20),
                "keyset_chain": measure(client, f"{len(chain)} pages along the keyset chain", chain),
                "filtered": measure(
                    client, "filtered", [base + "?filter=" + "tag+%3D+%22fp16%22+AND+metadata.accuracy+%3E+0.1"] * 10
                ),
                "ordered_by_metadata": measure(
                    client, "ordered by metadata", [base + "?order=metadata.val_loss+asc&cols=val_loss,accuracy"] * 10
                ),
            }
        finally:
            client.close()
        print(json.dumps(results, indent=1))
    finally:
        web.stop()
        metadata.stop(grace=None)
        blobs.stop(grace=None)


if __name__ == "__main__":
    main()
