"""`mreg serve --auth` as a user runs it: the first admin token, and calls refused without one."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.helpers import assert_same_tree, make_checkpoint
from tests.processes import free_port, mreg_serve

MREG = Path(sys.executable).parent / "mreg"


def test_serve_with_auth_writes_one_admin_token_and_refuses_calls_without_a_token(tmp_path: Path) -> None:
    data = tmp_path / "data"
    metadata_port, blob_port = free_port(), free_port()
    env = dict(os.environ, MREG_METADATA_ADDR=f"127.0.0.1:{metadata_port}", MREG_BLOB_ADDR=f"127.0.0.1:{blob_port}")
    env.pop("MREG_TOKEN", None)
    checkpoint = make_checkpoint(tmp_path / "ck", large_bytes=1 << 20)

    with mreg_serve(data, metadata_port, blob_port, "--auth") as banner:
        assert any(str(data / "admin.token") in line for line in banner), banner
        admin_file = data / "admin.token"
        assert stat.S_IMODE(admin_file.stat().st_mode) == 0o600
        admin = admin_file.read_text().strip()
        assert not [line for line in banner if admin in line], "the token was printed"

        refused = subprocess.run(
            [str(MREG), "push", str(checkpoint), "acme/vision/guarded"], env=env, capture_output=True, text=True
        )
        assert refused.returncode == 1
        assert refused.stderr.startswith("mreg: error: UNAUTHENTICATED: "), refused.stderr

        authed = dict(env, MREG_TOKEN=admin)
        pushed = subprocess.run(
            [str(MREG), "push", str(checkpoint), "acme/vision/guarded", "--json"],
            env=authed,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert pushed.returncode == 0, pushed.stderr
        assert json.loads(pushed.stdout)["ref"] == "acme/vision/guarded:v0"

    # A restart keeps the tokens: no new admin token, and the old one still works.
    with mreg_serve(data, metadata_port, blob_port, "--auth"):
        assert (data / "admin.token").read_text().strip() == admin
        pulled = subprocess.run(
            [str(MREG), "pull", "acme/vision/guarded", str(tmp_path / "out")],
            env=authed,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert pulled.returncode == 0, pulled.stderr
        assert_same_tree(checkpoint, tmp_path / "out")
