"""Named client profiles (``mreg login``): addresses, default entity/project, a CA path and a token.

They live in ``profiles.json`` in the user's config directory: ``$MREG_CONFIG_DIR``, else
``$XDG_CONFIG_HOME/mreg``, else ``~/.config/mreg``. The file is mode 0600 and its directory
0700, since it holds tokens. A command picks a profile by ``--profile NAME`` or
``MREG_PROFILE``, else uses the profile "default" when it exists.

Precedence, for every setting: command-line flags > environment variables > config.toml > the
profile > built-in defaults; client.settings applies it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from mreg.client.channels import Credentials
from mreg.client.errors import MregError

DEFAULT_PROFILE = "default"
FILE_NAME = "profiles.json"


@dataclass(frozen=True)
class Profile:
    metadata_addr: str | None = None
    blob_addr: str | None = None
    entity: str | None = None
    project: str | None = None
    ca_cert: str | None = None  # a path to a PEM file
    token: str | None = None

    def __repr__(self) -> str:  # the token must never reach a log line or a traceback
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "token"}
        return f"Profile({', '.join(f'{k}={v!r}' for k, v in shown.items())}, token={'<set>' if self.token else None})"

    def credentials(self) -> Credentials:
        ca_cert = Path(self.ca_cert).expanduser().read_bytes() if self.ca_cert else None
        return Credentials(token=self.token, ca_cert=ca_cert)


def config_dir(environ: Any = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get("MREG_CONFIG_DIR"):
        return Path(env["MREG_CONFIG_DIR"]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
    return Path(base) / "mreg"


def profiles_path() -> Path:
    return config_dir() / FILE_NAME


def load_all() -> dict[str, Profile]:
    path = profiles_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise MregError("FAILED_PRECONDITION", f"cannot read the profiles in {path}: {type(e).__name__}") from None
    known = {f.name for f in fields(Profile)}
    profiles = data.get("profiles", {}) if isinstance(data, dict) else {}
    return {
        name: Profile(**{k: v for k, v in values.items() if k in known and isinstance(v, str)})
        for name, values in profiles.items()
        if isinstance(values, dict)
    }


def selected_name(name: str | None = None) -> str | None:
    """The profile a command uses: ``name``, else MREG_PROFILE, else "default"; None if none is asked for."""
    return name or os.environ.get("MREG_PROFILE") or None


def active(name: str | None = None) -> Profile | None:
    """The profile ``name`` (or MREG_PROFILE) names, or "default" if it exists, or None.

    A profile asked for by name that does not exist is NOT_FOUND.
    """
    wanted = selected_name(name)
    profiles = load_all()
    if wanted is None:
        return profiles.get(DEFAULT_PROFILE)
    if wanted not in profiles:
        raise MregError("NOT_FOUND", f"no profile named {wanted!r} in {profiles_path()}; create it with mreg login")
    return profiles[wanted]


def save(name: str, profile: Profile) -> Path:
    """Adds or replaces the profile ``name``; the file is written atomically, mode 0600, in a 0700 directory."""
    directory = config_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    profiles = load_all()
    profiles[name] = profile
    _write(directory, profiles)
    return directory / FILE_NAME


def remove(name: str) -> bool:
    """Removes the profile ``name``; False if there was none."""
    profiles = load_all()
    if name not in profiles:
        return False
    del profiles[name]
    _write(config_dir(), profiles)
    return True


def _write(directory: Path, profiles: dict[str, Profile]) -> None:
    document = {
        "profiles": {
            name: {k: v for k, v in asdict(profile).items() if v is not None} for name, profile in profiles.items()
        }
    }
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".profiles-", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(document, f, indent=2, sort_keys=True)
            f.write("\n")
        os.chmod(temporary, 0o600)
        os.replace(temporary, directory / FILE_NAME)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def with_profile(credentials: Credentials, profile: Profile | None) -> Credentials:
    """``credentials`` with the token and CA certificate the profile gives where they have none."""
    if profile is None:
        return credentials
    extra = profile.credentials()
    return replace(
        credentials,
        token=credentials.token or extra.token,
        ca_cert=credentials.ca_cert if credentials.ca_cert is not None else extra.ca_cert,
    )
