"""Client profiles (client.profiles) and the token CLI's duration grammar, without servers."""

from __future__ import annotations

import argparse
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from mreg.client import Credentials, MregError, profiles
from mreg.client.cli import parse_duration


def test_the_config_directory_follows_mreg_config_dir_then_xdg_then_home() -> None:
    assert profiles.config_dir({"MREG_CONFIG_DIR": "/x/y"}) == Path("/x/y")
    assert profiles.config_dir({"XDG_CONFIG_HOME": "/cfg"}) == Path("/cfg/mreg")
    assert profiles.config_dir({}) == Path("~/.config/mreg").expanduser()


def test_profiles_are_saved_private_and_the_default_one_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "nested" / "mreg"
    monkeypatch.setenv("MREG_CONFIG_DIR", str(directory))
    monkeypatch.delenv("MREG_PROFILE", raising=False)
    assert profiles.active() is None
    saved = profiles.Profile(metadata_addr="m:1", blob_addr="b:2", entity="acme", token="mreg_s3cret")
    path = profiles.save("default", saved)
    profiles.save("other", profiles.Profile(token="mreg_other"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert profiles.active() == saved
    assert profiles.active("other") == profiles.Profile(token="mreg_other")
    monkeypatch.setenv("MREG_PROFILE", "other")
    assert profiles.active() == profiles.Profile(token="mreg_other")
    monkeypatch.setenv("MREG_PROFILE", "missing")
    with pytest.raises(MregError) as error:
        profiles.active()
    assert error.value.code == "NOT_FOUND"
    assert "mreg_s3cret" not in repr(saved)
    assert profiles.remove("other") and not profiles.remove("other")
    assert set(profiles.load_all()) == {"default"}


def test_the_profile_fills_in_only_what_the_environment_left_unset() -> None:
    profile = profiles.Profile(token="from-profile")
    assert profiles.with_profile(Credentials(), profile).token == "from-profile"
    assert profiles.with_profile(Credentials(token="from-env"), profile).token == "from-env"
    assert profiles.with_profile(Credentials(token="from-env"), None).token == "from-env"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        ("3600s", timedelta(seconds=3600)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "0s", "10", "1w", "-1d", "1.5h", "d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)
