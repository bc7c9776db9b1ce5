"""`mreg serve` starts the web UI beside both services (and prints its URL); `--no-web` leaves it out."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.processes import free_port, mreg_serve
from tests.web import form_value

MREG = Path(sys.executable).parent / "mreg"

pytestmark = pytest.mark.timeout(120)


@contextmanager
def serve(data: Path, *options: str) -> Iterator[list[str]]:
    """`mreg serve` on free ports; yields its banner up to the line that says where the data is."""
    with mreg_serve(data, 0, 0, *options, until="data in ") as banner:
        yield banner


def test_serve_starts_the_web_ui_prints_its_url_and_it_signs_in_with_the_admin_token(tmp_path: Path) -> None:
    port = free_port()
    with serve(tmp_path / "data", "--auth", "--web-port", str(port)) as banner:
        assert f"mreg web UI at http://127.0.0.1:{port}/\n" in banner, banner
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            assert client.get("/").headers["location"] == "/signin"
            form = client.get("/signin").text
            admin = (tmp_path / "data" / "admin.token").read_text().strip()
            signed_in = client.post("/signin", data={"csrf": form_value(form, "csrf"), "next": "/", "token": admin})
            assert signed_in.status_code == 303
            assert client.get("/e/acme").status_code == 200


def test_serve_with_no_web_starts_no_web_ui(tmp_path: Path) -> None:
    port = free_port()
    with serve(tmp_path / "data", "--no-web", "--web-port", str(port)) as banner:
        assert not [line for line in banner if "web UI" in line], banner
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=5)


def test_serve_refuses_a_web_port_that_is_taken_saying_what_to_do(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(
            [str(MREG), "serve", "--data-dir", str(tmp_path / "d"), "--metadata-port", "0", "--blob-port", "0",
             "--web-port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "--no-web" in result.stderr
    assert "Traceback" not in result.stderr


def test_mreg_web_alone_serves_the_services_it_is_pointed_at(servers, tmp_path: Path) -> None:
    env = {**os.environ, **servers.cli_env()}
    process = subprocess.Popen(
        [str(MREG), "web", "--listen", "127.0.0.1:0", "--entity", "acme"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.match(r"mreg web UI at (http://127\.0\.0\.1:\d+)/ ", line)
        assert match, line
        home = httpx.get(match.group(1) + "/", timeout=30)
        assert '<a id="suggested" href="/e/acme">acme</a>' in home.text  # --entity is offered
        page = httpx.get(match.group(1) + "/e/acme", timeout=30)
        assert page.status_code == 200 and "<h2>Projects</h2>" in page.text
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_mreg_web_refuses_a_non_loopback_address_when_the_services_do_not_authenticate(servers) -> None:
    env = {**os.environ, **servers.cli_env()}
    result = subprocess.run(
        [str(MREG), "web", "--listen", "0.0.0.0:0"], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0:0" in result.stderr and "--insecure" in result.stderr


def test_the_web_ui_of_mreg_serve_reaches_services_that_require_mutual_tls(pki, tmp_path: Path) -> None:
    port = free_port()
    tls = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--tls-client-ca", str(pki.ca_cert)]
    with serve(tmp_path / "data", *tls, "--web-port", str(port)) as banner:
        assert f"mreg web UI at http://127.0.0.1:{port}/\n" in banner, banner
        page = httpx.get(f"http://127.0.0.1:{port}/e/acme", timeout=30)
        assert page.status_code == 200, page.text  # the services answered the web UI over mutual TLS
        assert "<h2>Projects</h2>" in page.text
