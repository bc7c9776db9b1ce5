"""Build hook: generates the Python gRPC stubs from ``protos/`` whenever the package is built.

``pip install .``, ``pip wheel .`` and ``make install`` all come through here, so an installed
``mreg`` always carries stubs generated from the protos it was built from. Installed code lives
under one namespace, ``mreg``: the wheel maps the top-level folders (``client/`` ...) to
``mreg.client`` ... (see ``[tool.hatch.build.targets.wheel.sources]``). An editable install
cannot rewrite paths that way, so it gets a small tree of symbolic links instead,
``protos/gen/editable/mreg``, whose entries point back at the folders being edited.

``python hatch_build.py`` (what ``make protos`` runs) regenerates the stubs by hand.
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

ROOT = Path(__file__).resolve().parent
PROTOS = ROOT / "protos"
GENERATED = PROTOS / "gen" / "python"
EDITABLE = PROTOS / "gen" / "editable"
# The hand-written packages, each a top-level folder installed as mreg.<folder>.
PACKAGES = ("client", "metadata_service", "blob_service", "server_runtime")


def contract_files() -> list[Path]:
    """The protos of the contract itself; the vendored google/rpc ones come from googleapis-common-protos."""
    return sorted((PROTOS / "mreg").rglob("*.proto"))


def generate_stubs(force: bool = False) -> None:
    """Writes ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` under protos/gen/python, unless up to date."""
    stamp = GENERATED / ".stamp"
    sources = contract_files()
    if not force and stamp.exists():
        built = stamp.stat().st_mtime
        if all(source.stat().st_mtime <= built for source in sources):
            return
    from grpc_tools import protoc  # a build requirement, not a runtime one

    shutil.rmtree(GENERATED, ignore_errors=True)
    GENERATED.mkdir(parents=True)
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    arguments = [
        "grpc_tools.protoc",
        f"--proto_path={PROTOS}",
        f"--proto_path={well_known}",
        f"--python_out={GENERATED}",
        f"--pyi_out={GENERATED}",
        f"--grpc_python_out={GENERATED}",
        *(str(source.relative_to(PROTOS)) for source in sources),
    ]
    # protoc resolves the relative names against --proto_path, from the protos folder.
    previous = os.getcwd()
    os.chdir(PROTOS)
    try:
        if protoc.main(arguments) != 0:
            raise RuntimeError("protoc failed to compile protos/; see the messages above")
    finally:
        os.chdir(previous)
    for directory in [GENERATED / "mreg", *(GENERATED / "mreg").rglob("*")]:
        if directory.is_dir():
            (directory / "__init__.py").touch()
    stamp.touch()


def lay_out_editable() -> None:
    """Builds protos/gen/editable/mreg: links to the generated stubs and to the hand-written folders."""
    namespace = EDITABLE / "mreg"
    shutil.rmtree(EDITABLE, ignore_errors=True)
    namespace.mkdir(parents=True)
    (namespace / "__init__.py").touch()
    targets = [path for path in (GENERATED / "mreg").iterdir() if path.is_dir()]
    targets += [ROOT / package for package in PACKAGES]
    for target in targets:
        (namespace / target.name).symlink_to(os.path.relpath(target, namespace), target_is_directory=True)


class StubsBuildHook(BuildHookInterface):  # type: ignore[misc]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        generate_stubs()
        if self.target_name == "wheel" and version == "editable":
            lay_out_editable()


if __name__ == "__main__":
    generate_stubs(force="--force" in sys.argv)
    lay_out_editable()
