"""The mreg client: push and pull model versions, manage aliases and registered models."""

from __future__ import annotations

from mreg.client.channels import Credentials
from mreg.client.errors import MregError
from mreg.client.registry import PullResult, PushResult, Registry
from mreg.client.settings import ClientSettings

__all__ = ["ClientSettings", "Credentials", "MregError", "PullResult", "PushResult", "Registry"]
