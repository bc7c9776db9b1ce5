"""Client settings (client.settings): one precedence for every setting, errors that name the source, a hidden token."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mreg.client import ClientSettings, MregError, Registry, profiles
from mreg.client.cli import main as cli_main
from mreg.client.snapshots import max_size_from_env

SECRET = "mreg_settings_s3cret_token"


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty config directory of the test's own and an environment without MREG_* settings."""
    directory = tmp_path / "config"
    monkeypatch.setenv("MREG_CONFIG_DIR", str(directory))
    for name in ClientSettings.model_fields:
        monkeypatch.delenv(f"MREG_{name.upper()}", raising=False)
    return directory


def _config(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.toml"
    path.write_text(text)
    return path


def test_a_flag_beats_the_environment_which_beats_config_toml_which_beats_the_profile_which_beats_the_default(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    profiles.save("default", profiles.Profile(metadata_addr="profile:1", blob_addr="profile:2", entity="p-entity"))
    config = _config(config_dir, 'metadata_addr = "toml:1"\nblob_addr = "toml:2"\n')
    monkeypatch.setenv("MREG_METADATA_ADDR", "env:1")

    settings = ClientSettings.load(flag_names=True, metadata_addr="flag:1")
    assert settings.metadata_addr == "flag:1" and settings.source("metadata_addr") == "flag --metadata-addr"
    settings = ClientSettings.load()
    assert settings.metadata_addr == "env:1" and settings.source("metadata_addr") == "environment MREG_METADATA_ADDR"
    assert settings.blob_addr == "toml:2" and settings.source("blob_addr") == str(config)
    assert settings.entity == "p-entity"
    assert settings.source("entity") == f"profile 'default' in {profiles.profiles_path()}"
    assert (settings.parallel, settings.source("parallel")) == (8, "default")
    assert settings.cache_max_size == 50 * 10**9


def test_a_config_toml_profile_table_overlays_the_top_level_when_selected(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(config_dir, 'parallel = 4\ncache_max_size = "2GiB"\n[profiles.ci]\nparallel = 32\n')
    assert ClientSettings.load().parallel == 4
    settings = ClientSettings.load(profile="ci")
    assert (settings.parallel, settings.source("parallel")) == (32, f"{config} [profiles.ci]")
    assert settings.cache_max_size == 2 << 30 and settings.source("cache_max_size") == str(config)
    monkeypatch.setenv("MREG_PROFILE", "ci")
    assert ClientSettings.load().parallel == 32
    with pytest.raises(MregError) as error:
        ClientSettings.load(profile="nowhere")
    assert error.value.code == "NOT_FOUND" and "nowhere" in error.value.message


@pytest.mark.parametrize(("text", "limit"), [("0", None), ("none", None), ("Unlimited", None), ("500MB", 500 * 10**6)])
def test_the_cache_size_limit_reads_sizes_and_the_words_for_no_limit(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch, text: str, limit: int | None
) -> None:
    monkeypatch.setenv("MREG_CACHE_MAX_SIZE", text)
    assert ClientSettings.load().cache_max_size == limit
    assert max_size_from_env() == limit


def test_a_bad_value_is_invalid_argument_naming_the_setting_and_the_source_it_came_from(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(**values: object) -> str:
        with pytest.raises(MregError) as error:
            ClientSettings.load(**values)
        assert error.value.code == "INVALID_ARGUMENT"
        return error.value.message

    # A flag (keyword argument).
    assert refused(flag_names=True, parallel=0).startswith("parallel (from flag --parallel): ")
    assert refused(timeout=-1).startswith("timeout (from argument timeout): Input should be greater than 0")
    # The environment.
    monkeypatch.setenv("MREG_PARALLEL", "many")
    assert refused().startswith("parallel (from environment MREG_PARALLEL): Input should be a valid integer")
    monkeypatch.delenv("MREG_PARALLEL")
    monkeypatch.setenv("MREG_CA_CERT", str(config_dir / "missing.pem"))
    assert refused() == f"ca_cert (from environment MREG_CA_CERT): no such file: {config_dir / 'missing.pem'}"
    monkeypatch.delenv("MREG_CA_CERT")
    # config.toml: a bad value, a table overlay's bad value, an unknown key, a file that is not TOML.
    config = _config(config_dir, 'cache_max_size = "lots"\n')
    message = refused()
    assert message.startswith(f"cache_max_size (from {config}): a size is a number and a unit")
    _config(config_dir, "[profiles.ci]\ntls = 'perhaps'\n")
    assert refused(profile="ci").startswith(f"tls (from {config} [profiles.ci]): Input should be a valid boolean")
    _config(config_dir, 'metdata_addr = "x:1"\n')
    assert refused().startswith(f"metdata_addr (from {config}): not a setting")
    _config(config_dir, "parallel = \n")
    assert refused().startswith(f"config file (from {config}): not valid TOML")
    config.unlink()
    # The login profile.
    profiles.save("default", profiles.Profile(ca_cert=str(config_dir / "gone.pem")))
    assert refused().startswith(f"ca_cert (from profile 'default' in {profiles.profiles_path()}): no such file")


def test_the_token_never_appears_in_repr_str_describe_or_errors(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MREG_TOKEN", SECRET)
    settings = ClientSettings.load()
    assert settings.token is not None and settings.token.get_secret_value() == SECRET
    assert settings.credentials().token == SECRET
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    assert settings.describe()["token"] == {"value": "<set>", "source": "environment MREG_TOKEN"}
    with pytest.raises(MregError) as error:
        ClientSettings.load(parallel=0)
    assert SECRET not in str(error.value) and SECRET not in repr(error.value)


def test_config_show_prints_each_setting_with_its_source_and_the_token_as_set(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(config_dir, "parallel = 16\n")
    monkeypatch.setenv("MREG_TOKEN", SECRET)
    capsys.readouterr()
    assert cli_main(["config", "show", "--json", "--entity", "acme"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config_file"] == str(config)
    assert data["settings"]["parallel"] == {"value": 16, "source": str(config)}
    assert data["settings"]["entity"] == {"value": "acme", "source": "flag --entity"}
    assert data["settings"]["token"] == {"value": "<set>", "source": "environment MREG_TOKEN"}
    assert data["settings"]["metadata_addr"] == {"value": "localhost:50051", "source": "default"}

    assert cli_main(["config", "show"]) == 0
    text = capsys.readouterr().out
    assert SECRET not in text
    assert re.search(r"^SETTING\s+VALUE\s+SOURCE$", text, re.MULTILINE)
    assert re.search(rf"^parallel\s+16\s+{re.escape(str(config))}$", text, re.MULTILINE)
    assert re.search(r"^token\s+<set>\s+environment MREG_TOKEN$", text, re.MULTILINE)
    assert re.search(r"^cache_max_size\s+50000000000 \(46\.6 GiB\)\s+default$", text, re.MULTILINE)

    monkeypatch.setenv("MREG_TIMEOUT", "soon")
    assert cli_main(["config", "show", "--json"]) == 1
    error = json.loads(capsys.readouterr().err)
    assert error["code"] == "INVALID_ARGUMENT"
    assert error["message"].startswith("timeout (from environment MREG_TIMEOUT)")


def test_registry_connect_and_from_env_take_what_the_arguments_leave_out_from_the_settings(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _config(config_dir, 'blob_addr = "toml:2"\ntimeout = 5\n')
    monkeypatch.setenv("MREG_METADATA_ADDR", "env:1")
    monkeypatch.setenv("MREG_PARALLEL", "3")
    with Registry.from_env(use_cache=False) as registry:
        assert registry.settings is not None
        assert (registry.settings.metadata_addr, registry.settings.blob_addr) == ("env:1", "toml:2")
        assert (registry.parallel, registry.timeout) == (3, 5.0)
    with Registry.connect("flag:1", parallel=2, use_cache=False) as registry:
        assert registry.settings is not None and registry.settings.metadata_addr == "flag:1"
        assert registry.settings.source("metadata_addr") == "argument metadata_addr" and registry.parallel == 2
