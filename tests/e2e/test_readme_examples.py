"""The README's examples, run as written, so they cannot drift from what the client does."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from mreg.client import Registry
from tests.helpers import assert_same_tree
from tests.processes import free_port, mreg_serve

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks(section: str) -> list[str]:
    """The ```python blocks of the README section headed ``## {section}``."""
    text = README.read_text()
    _, found, rest = text.partition(f"\n## {section}\n")
    assert found, f"README has no section {section!r}"
    body = rest.split("\n## ", 1)[0]
    return re.findall(r"^```python\n(.*?)^```$", body, re.MULTILINE | re.DOTALL)


def _walkthrough_files(directory: Path) -> Path:
    """ck/, ck2/ and card.md as the walkthrough makes them (with a smaller weights file)."""
    directory.mkdir()
    checkpoint = directory / "ck"
    checkpoint.mkdir()
    (checkpoint / "weights.bin").write_bytes(os.urandom(3 << 20))
    (checkpoint / "config.json").write_text('{"layers": 50}\n')
    shutil.copytree(checkpoint, directory / "ck2")
    (directory / "ck2" / "config.json").write_text('{"layers": 101}\n')
    (directory / "card.md").write_text("# Image Classifier\n\nTop-1 0.94 on our validation set.\n")
    return directory


def test_the_python_client_example_runs_as_written_against_a_fresh_registry(tmp_path: Path) -> None:
    (example,) = _python_blocks("Python client")
    workdir = _walkthrough_files(tmp_path / "work")
    metadata_port, blob_port = free_port(), free_port()
    # The example names the default ports; the test's services listen on free ones.
    assert example.count("localhost:50051") == example.count("localhost:50052") == 1, example
    script = example.replace("localhost:50051", f"localhost:{metadata_port}")
    script = script.replace("localhost:50052", f"localhost:{blob_port}")
    env = {k: v for k, v in os.environ.items() if k not in ("MREG_TOKEN", "MREG_ENTITY", "MREG_PROJECT")}

    with mreg_serve(tmp_path / "data", metadata_port, blob_port, "--no-web"):
        ran = subprocess.run(
            [sys.executable, "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=120
        )
        assert ran.returncode == 0, ran.stderr
        with Registry.connect(f"localhost:{metadata_port}", f"localhost:{blob_port}") as registry:
            candidate = registry.get_version("acme/vision/resnet:candidate")
            production = registry.get_version("acme/vision/resnet:production")
            card = registry.get_registered_model("acme/model-registry/Image Classifier").description

    printed = ran.stdout.splitlines()
    assert printed[0] == "False ('metadata',)", ran.stdout
    assert (candidate.index, candidate.metadata, candidate.tags) == (
        0,
        {"accuracy": 0.93, "notes": "fine-tuned"},
        ("fp16",),
    )
    assert json.loads((workdir / "restored" / "config.json").read_text()) == {"layers": 50}
    assert_same_tree(workdir / "ck", workdir / "restored")
    assert card == (workdir / "card.md").read_text()
    # The compare-and-set promotion moved production from the candidate to the version ck2 made.
    assert (production.index, production.metadata) == (1, {"accuracy": 0.95})
