"""Configuration by flags, each with an environment variable that sets its default.

A service describes its settings as a frozen dataclass whose field defaults are the
built-in defaults; :func:`add_flag` adds ``--field-name`` of the field's declared type, taking
its default from the environment variable when set, and :func:`config_from_args` builds
the dataclass back from the parsed flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from typing import Any, TypeVar

C = TypeVar("C")

# Both services' --max-connection-age-seconds (runtime.connection_options).
DEFAULT_MAX_CONNECTION_AGE_SECONDS = 300.0
MAX_CONNECTION_AGE_HELP = (
    "close each client connection gracefully after this long (calls in flight finish), so clients of a DNS "
    "name resolve it again and reach new replicas; 0 = never"
)


def add_flag(parser: argparse.ArgumentParser, config: type[Any], field: str, env: str, help: str) -> None:
    """Adds ``--FIELD`` (underscores as dashes) of the type ``config`` declares for the field.

    The default is the environment variable ``env`` if set, else the dataclass's default.
    """
    default = getattr(config, field)
    kind = typing.get_type_hints(config)[field]
    parser.add_argument(
        "--" + field.replace("_", "-"),
        type=kind,
        default=kind(os.environ.get(env, default)),
        help=f"{help} (env {env})",
    )


def add_off_switch(parser: argparse.ArgumentParser, flag: str, field: str, env: str, help: str) -> None:
    """Adds a flag that turns the boolean setting ``field`` off; so does ``env`` set to anything non-empty."""
    parser.add_argument(
        flag, dest=field, action="store_false", default=os.environ.get(env, "") == "", help=f"{help} (env {env}=1)"
    )


def add_switch(parser: argparse.ArgumentParser, field: str, env: str, help: str) -> None:
    """Adds ``--FIELD``, turning the boolean setting on; so does ``env`` set to 1, true, yes or on."""
    parser.add_argument(
        "--" + field.replace("_", "-"),
        dest=field,
        action="store_true",
        default=os.environ.get(env, "").strip().lower() in ("1", "true", "yes", "on"),
        help=f"{help} (env {env}=1)",
    )


def config_from_args(config: type[C], args: argparse.Namespace) -> C:
    """The settings dataclass ``config`` built from the parsed flags of the same names."""
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(config)}  # type: ignore[arg-type]
    return config(**values)
