"""The client's settings, resolved in one place: flags > environment > config.toml > login profile > defaults.

Every setting has one name, used as the keyword argument (``Registry.connect(parallel=4)``), the
command-line flag (``--parallel``, where the command has one), the environment variable with the
``MREG_`` prefix (``MREG_PARALLEL``), the key in ``config.toml`` and, for those ``mreg login``
saves, the key in ``profiles.json``. Both files live in the config directory
(``client.profiles.config_dir()``: ``$MREG_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/mreg``, else
``~/.config/mreg``)::

    # config.toml
    metadata_addr = "registry.example.com:50051"
    blob_addr = "registry.example.com:50052"
    parallel = 16
    cache_max_size = "200GB"

    [profiles.ci]          # used with --profile ci or MREG_PROFILE=ci; overlays the keys above
    entity = "acme"
    cache_max_size = "none"

The profile (``--profile``, else ``MREG_PROFILE``, else ``profile`` in config.toml) also picks the
``mreg login`` profile in ``profiles.json``; without one, the login profile "default" is used when it
exists. A value that does not fit its setting is ``MregError("INVALID_ARGUMENT", "<setting> (from
<source>): <what is wrong>")``, never a pydantic traceback. The token is a ``SecretStr``: no repr, log
line or error message shows it.
"""

from __future__ import annotations

import contextvars
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from mreg.client import profiles
from mreg.client.channels import KEEPALIVE_SECONDS, Credentials
from mreg.client.errors import MregError
from mreg.client.snapshots import DEFAULT_MAX_SIZE, parse_size
from mreg.client.transfer import DEFAULT_RETRY_SECONDS

DEFAULT_METADATA_ADDR = "localhost:50051"
DEFAULT_BLOB_ADDR = "localhost:50052"
CONFIG_FILE = "config.toml"
ENV_PREFIX = "MREG_"
# The values of cache_max_size that mean "no limit".
UNLIMITED = ("0", "none", "unlimited")


def _xdg_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mreg"


def config_path() -> Path:
    """Where config.toml is read from: the config directory of client.profiles."""
    return profiles.config_dir() / CONFIG_FILE


@dataclass
class _Load:
    """What one ``ClientSettings.load`` call asks of the sources, and what they gave (for errors and ``describe``)."""

    environ: Mapping[str, str] | None = None
    files: bool = True
    flag_names: bool = False  # init kwargs are command-line flags (--name) rather than keyword arguments
    missing_profile_ok: bool = False
    # (label of each key, values) per source, highest precedence first.
    given: list[tuple[Callable[[str], str], dict[str, Any]]] = field(default_factory=list)

    def source_of(self, name: str) -> str:
        for label, values in self.given:
            if values.get(name) is not None:
                return label(name)
        return "default"


_LOADING: contextvars.ContextVar[_Load | None] = contextvars.ContextVar("mreg_settings_load", default=None)


class ClientSettings(BaseSettings):
    """Where the client connects, as whom, and how it transfers and caches (see the module docstring)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="ignore", frozen=True)

    metadata_addr: str = Field(DEFAULT_METADATA_ADDR, min_length=1, description="the metadata service, HOST:PORT")
    blob_addr: str = Field(DEFAULT_BLOB_ADDR, min_length=1, description="the blob service, HOST:PORT")
    entity: str | None = Field(None, description="the default entity")
    project: str | None = Field(None, description="the default project")
    token: SecretStr | None = Field(None, description="the bearer token (never shown)")
    tls: bool = Field(False, description="use TLS with the system's CA certificates")
    ca_cert: Path | None = Field(None, description="use TLS, trusting only the CA certificates in this PEM file")
    client_cert: Path | None = Field(None, description="a client certificate (PEM), for mutual TLS")
    client_key: Path | None = Field(None, description="the private key of client_cert (PEM)")
    parallel: int = Field(8, ge=1, le=256, description="parallel transfer streams")
    timeout: float = Field(120.0, gt=0, description="seconds each metadata call may take")
    keepalive: float = Field(
        KEEPALIVE_SECONDS,
        ge=1,
        description="seconds of silence after which a connection is pinged; a replica that does not answer "
        "within as long again is dropped and its calls retried on another",
    )
    retry_seconds: float = Field(
        DEFAULT_RETRY_SECONDS,
        gt=0,
        description="seconds a transfer stream keeps retrying a blob service that stopped answering, from its "
        "last progress, before the transfer fails (a push run again resumes where it stopped)",
    )
    stream_while_hashing: bool = Field(
        True,
        description="stream large files not hashed before while hashing them (a new checkpoint uploads sooner; "
        "a copy of content the blob service holds sends part of its bytes before its hash shows them stored)",
    )
    cache_dir: Path = Field(default_factory=_xdg_cache_dir, description="the local hash, content and download cache")
    cache_max_size: int | None = Field(
        DEFAULT_MAX_SIZE, description="the download cache's size limit in bytes; None: no limit"
    )
    profile: str | None = Field(None, description="the profile (config.toml [profiles.NAME], mreg login)")

    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("ca_cert", "client_cert", "client_key", mode="after")
    @classmethod
    def _existing_file(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        path = path.expanduser()
        if not path.is_file():
            raise ValueError(f"no such file: {path}")
        return path

    @field_validator("cache_dir", mode="after")
    @classmethod
    def _expand(cls, path: Path) -> Path:
        return path.expanduser()

    @field_validator("cache_max_size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int | float):
            return None if value == 0 else value
        text = str(value).strip()
        if text.lower() in UNLIMITED:
            return None
        try:
            return parse_size(text)
        except MregError as e:
            raise ValueError(e.message) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        load = _LOADING.get() or _Load()
        assert isinstance(init_settings, InitSettingsSource)
        flags = dict(init_settings.init_kwargs)
        environ = os.environ if load.environ is None else load.environ
        environment = _Environment(settings_cls, environ)
        sources: list[PydanticBaseSettingsSource] = [
            _Tracked(init_settings, load, _flag_label if load.flag_names else _argument_label),
            _Tracked(environment, load, _env_label),
        ]
        if load.files:
            toml = _TomlFile(settings_cls, config_path())
            wanted = flags.get("profile") or environ.get(ENV_PREFIX + "PROFILE") or toml.top.get("profile") or None
            toml.select(wanted)
            login = _LoginProfile(settings_cls, wanted, in_toml=toml.has_profile, missing_ok=load.missing_profile_ok)
            sources += [_Tracked(toml, load, toml.label), _Tracked(login, load, login.label)]
        return tuple(sources)

    @classmethod
    def load(
        cls,
        *,
        environ: Mapping[str, str] | None = None,
        files: bool = True,
        flag_names: bool = False,
        missing_profile_ok: bool = False,
        **values: Any,
    ) -> ClientSettings:
        """The settings: ``values`` (None means "not given") over the environment, config.toml and the login profile.

        Args:
            environ: the environment to read instead of ``os.environ``.
            files: False reads neither config.toml nor profiles.json.
            flag_names: name ``values`` as command-line flags (``--parallel``) in errors and ``describe``.
            missing_profile_ok: a profile asked for that exists nowhere is not an error (``mreg login`` creates it).

        Raises:
            MregError: INVALID_ARGUMENT naming the setting and where its value came from; NOT_FOUND for a
                profile asked for by name that neither config.toml nor profiles.json holds.
        """
        load = _Load(environ=environ, files=files, flag_names=flag_names, missing_profile_ok=missing_profile_ok)
        token = _LOADING.set(load)
        try:
            settings = cls(**{k: v for k, v in values.items() if v is not None})
        except ValidationError as e:
            raise MregError("INVALID_ARGUMENT", _explain(e, load)) from None
        finally:
            _LOADING.reset(token)
        settings._sources = {name: load.source_of(name) for name in cls.model_fields}
        return settings

    def source(self, name: str) -> str:
        """Where setting ``name`` came from: "flag --parallel", "environment MREG_PARALLEL", a file, or "default"."""
        return self._sources.get(name, "default")

    def describe(self) -> dict[str, dict[str, Any]]:
        """Each setting's value (the token as ``<set>``) and where it came from, for ``mreg config show``."""
        shown: dict[str, dict[str, Any]] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "<set>"
            elif isinstance(value, Path):
                value = str(value)
            shown[name] = {"value": value, "source": self.source(name)}
        return shown

    def credentials(self) -> Credentials:
        """The token and TLS material: the PEM files are read here.

        Raises:
            MregError: INVALID_ARGUMENT when only one of client_cert and client_key is set.
            OSError: a PEM file that cannot be read.
        """
        if (self.client_cert is None) != (self.client_key is None):
            raise MregError(
                "INVALID_ARGUMENT",
                "--client-cert and --client-key go together: give both or neither "
                f"(client_cert from {self.source('client_cert')}, client_key from {self.source('client_key')})",
            )
        return Credentials(
            token=self.token.get_secret_value() if self.token else None,
            tls=self.tls,
            ca_cert=self.ca_cert.read_bytes() if self.ca_cert else None,
            client_cert=self.client_cert.read_bytes() if self.client_cert else None,
            client_key=self.client_key.read_bytes() if self.client_key else None,
        )


def _flag_label(name: str) -> str:
    return f"flag --{name.replace('_', '-')}"


def _argument_label(name: str) -> str:
    return f"argument {name}"


def _env_label(name: str) -> str:
    return f"environment {ENV_PREFIX}{name.upper()}"


def _explain(error: ValidationError, load: _Load) -> str:
    """A person-readable line per invalid value: ``<setting> (from <source>): <what is wrong>``."""
    lines = []
    for item in error.errors(include_url=False, include_input=False):
        name = str(item["loc"][0]) if item["loc"] else "settings"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{name} (from {load.source_of(name)}): {message}")
    return "; ".join(lines)


class _Tracked(PydanticBaseSettingsSource):
    """Runs ``inner`` and records what it gave, so errors and ``describe`` can name the source of each value."""

    def __init__(self, inner: PydanticBaseSettingsSource, load: _Load, label: Callable[[str], str]) -> None:
        super().__init__(inner.settings_cls)
        self._inner = inner
        self._load = load
        self._label = label

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._inner.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        values = self._inner()
        self._load.given.append((self._label, values))
        return values


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping (``os.environ`` by default)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k.lower(): v for k, v in self._environ.items() if v != ""}


class _TomlFile(PydanticBaseSettingsSource):
    """config.toml: its top-level keys, overlaid by ``[profiles.NAME]`` for the selected profile."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls)
        self.path = path
        self._profile: str | None = None
        try:
            document = tomllib.loads(path.read_text())
        except FileNotFoundError:
            document = {}
        except tomllib.TOMLDecodeError as e:
            raise MregError("INVALID_ARGUMENT", f"config file (from {path}): not valid TOML: {e}") from None
        except OSError as e:
            raise MregError("FAILED_PRECONDITION", f"cannot read the config file {path}: {e.strerror}") from None
        tables = document.pop("profiles", {})
        if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
            raise MregError("INVALID_ARGUMENT", f"profiles (from {path}): [profiles.NAME] tables of settings")
        self.top: dict[str, Any] = self._known(document, path)
        self._profiles: dict[str, dict[str, Any]] = {
            name: self._known(table, f"{path} [profiles.{name}]") for name, table in tables.items()
        }

    def _known(self, table: dict[str, Any], where: object) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        unknown = sorted(set(table) - set(fields))
        if unknown:
            raise MregError(
                "INVALID_ARGUMENT",
                f"{unknown[0]} (from {where}): not a setting; the settings are {', '.join(fields)}",
            )
        return dict(table)

    def select(self, profile: str | None) -> None:
        self._profile = profile

    @property
    def has_profile(self) -> bool:
        return self._profile is not None and self._profile in self._profiles

    def label(self, name: str) -> str:
        if self.has_profile and name in self._profiles[str(self._profile)]:
            return f"{self.path} [profiles.{self._profile}]"
        return str(self.path)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        overlay = self._profiles.get(self._profile, {}) if self._profile else {}
        return {**self.top, **overlay}


class _LoginProfile(PydanticBaseSettingsSource):
    """profiles.json, which ``mreg login`` writes: the named profile, or "default" when it exists."""

    def __init__(
        self, settings_cls: type[BaseSettings], wanted: str | None, *, in_toml: bool, missing_ok: bool
    ) -> None:
        super().__init__(settings_cls)
        self.path = profiles.profiles_path()
        saved = profiles.load_all()
        self.name = wanted or profiles.DEFAULT_PROFILE
        if wanted is not None and wanted not in saved and not in_toml and not missing_ok:
            raise MregError(
                "NOT_FOUND",
                f"no profile named {wanted!r} in {self.path} or {config_path()}; create it with mreg login",
            )
        chosen = saved.get(self.name)
        self._values = {k: v for k, v in vars(chosen).items() if v is not None} if chosen else {}

    def label(self, _: str) -> str:
        return f"profile {self.name!r} in {self.path}"

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)
