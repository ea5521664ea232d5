"""``Settings.from_env``: defaults, overrides, and the API key kept out of sight.

Every test passes an explicit ``environ`` (and a netrc path inside ``tmp_path``), so the
developer's shell and real ``~/.netrc`` never decide an outcome.
"""

from __future__ import annotations

import netrc as netrc_module
import traceback
from pathlib import Path

import platformdirs
import pytest

from mirror.errors import ConfigError
from mirror.settings import DEFAULT_BASE_URL, Settings, sqlite_path, sqlite_url

KEY = "0123456789abcdef0123456789abcdef01234567"  # 40 characters, like a W&B key
OTHER_KEY = "fedcba9876543210fedcba9876543210fedcba98"
assert len(KEY) == len(OTHER_KEY) == 40


def write_netrc(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)  # what `wandb login` leaves; some netrc readers insist on it
    return path


@pytest.fixture
def no_netrc(tmp_path: Path) -> Path:
    return tmp_path / "absent-netrc"


def test_defaults(no_netrc: Path) -> None:
    settings = Settings.from_env({}, netrc_path=no_netrc)

    home = Path(platformdirs.user_data_dir("wandb-mirror", appauthor=False))
    assert settings.home == home
    assert settings.db_url == f"sqlite:///{home / 'mirror.db'}"
    assert settings.db_path == home / "mirror.db"
    assert settings.blobs_dir == home / "blobs"
    assert settings.base_url == DEFAULT_BASE_URL == "https://api.wandb.ai"
    assert settings.api_host == "api.wandb.ai"
    assert settings.api_key is None
    assert settings.entity is None and settings.project is None


def test_mirror_home(tmp_path: Path, no_netrc: Path) -> None:
    settings = Settings.from_env({"MIRROR_HOME": str(tmp_path / "m")}, netrc_path=no_netrc)
    assert settings.home == tmp_path / "m"
    assert settings.db_path == tmp_path / "m" / "mirror.db"
    assert settings.db_url == sqlite_url(tmp_path / "m" / "mirror.db")
    assert settings.blobs_dir == tmp_path / "m" / "blobs"


def test_mirror_home_expands_user(no_netrc: Path) -> None:
    settings = Settings.from_env({"MIRROR_HOME": "~/mirror-data"}, netrc_path=no_netrc)
    assert settings.home == Path.home() / "mirror-data"


def test_mirror_db_url_sqlite_elsewhere(tmp_path: Path, no_netrc: Path) -> None:
    env = {"MIRROR_HOME": str(tmp_path / "home"), "MIRROR_DB_URL": f"sqlite:///{tmp_path}/x.db"}
    settings = Settings.from_env(env, netrc_path=no_netrc)
    assert settings.db_url == f"sqlite:///{tmp_path}/x.db"
    assert settings.db_path == tmp_path / "x.db"
    assert settings.blobs_dir == tmp_path / "blobs", "blobs live next to the database"


def test_mirror_db_url_postgres(tmp_path: Path, no_netrc: Path) -> None:
    env = {"MIRROR_HOME": str(tmp_path), "MIRROR_DB_URL": "postgresql://u:pw@db.example/mirror"}
    settings = Settings.from_env(env, netrc_path=no_netrc)
    assert settings.db_url == "postgresql://u:pw@db.example/mirror"
    assert settings.db_path is None
    assert settings.blobs_dir == tmp_path / "blobs"


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:////abs/m.db", Path("/abs/m.db")),
        ("sqlite:///rel/m.db?timeout=5", Path("rel/m.db")),
        ("sqlite:///:memory:", None),
        ("sqlite://", None),
        ("postgresql://h/db", None),
    ],
)
def test_sqlite_path(url: str, path: Path | None) -> None:
    assert sqlite_path(url) == path


@pytest.mark.parametrize(
    ("raw", "base", "host"),
    [
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080", "127.0.0.1"),
        ("https://wandb.example.com", "https://wandb.example.com", "wandb.example.com"),
    ],
)
def test_wandb_base_url(raw: str, base: str, host: str, no_netrc: Path) -> None:
    settings = Settings.from_env({"WANDB_BASE_URL": raw}, netrc_path=no_netrc)
    assert settings.base_url == base
    assert settings.api_host == host


@pytest.mark.parametrize("raw", ["api.wandb.ai", "ftp://api.wandb.ai", "http://", "not a url"])
def test_wandb_base_url_must_be_http(raw: str, no_netrc: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"WANDB_BASE_URL": raw}, netrc_path=no_netrc)
    assert "WANDB_BASE_URL" in info.value.message
    assert repr(raw.rstrip("/")) in info.value.message
    assert info.value.hint
    assert info.value.terminal


def test_entity_and_project(no_netrc: Path) -> None:
    env = {"WANDB_ENTITY": "team", "WANDB_PROJECT": "proj"}
    settings = Settings.from_env(env, netrc_path=no_netrc)
    assert (settings.entity, settings.project) == ("team", "proj")


def test_key_from_wandb_api_key(no_netrc: Path) -> None:
    settings = Settings.from_env({"WANDB_API_KEY": KEY}, netrc_path=no_netrc)
    assert settings.api_key == KEY
    assert settings.require_api_key() == KEY


def test_key_from_netrc_for_the_api_host(tmp_path: Path) -> None:
    netrc = write_netrc(
        tmp_path / "netrc",
        f"machine example.org\n  login user\n  password {OTHER_KEY}\n"
        f"machine api.wandb.ai\n  login user\n  password {KEY}\n",
    )
    assert Settings.from_env({}, netrc_path=netrc).api_key == KEY


def test_key_from_netrc_named_by_the_netrc_variable(tmp_path: Path) -> None:
    netrc = write_netrc(tmp_path / "netrc", f"machine api.wandb.ai login user password {KEY}\n")
    assert Settings.from_env({"NETRC": str(netrc)}).api_key == KEY


def test_netrc_entry_follows_wandb_base_url(tmp_path: Path) -> None:
    """`wandb login --host http://127.0.0.1:8080` writes `machine 127.0.0.1`."""
    netrc = write_netrc(
        tmp_path / "netrc",
        f"machine api.wandb.ai login user password {OTHER_KEY}\n"
        f"machine 127.0.0.1 login user password {KEY}\n",
    )
    env = {"WANDB_BASE_URL": "http://127.0.0.1:8080"}
    assert Settings.from_env(env, netrc_path=netrc).api_key == KEY


def test_wandb_api_key_wins_over_netrc(tmp_path: Path) -> None:
    netrc = write_netrc(tmp_path / "netrc", f"machine api.wandb.ai login user password {KEY}\n")
    settings = Settings.from_env({"WANDB_API_KEY": OTHER_KEY}, netrc_path=netrc)
    assert settings.api_key == OTHER_KEY


def test_no_key_anywhere(tmp_path: Path) -> None:
    netrc = write_netrc(tmp_path / "netrc", f"machine example.org login u password {KEY}\n")
    settings = Settings.from_env({}, netrc_path=netrc)
    assert settings.api_key is None
    with pytest.raises(ConfigError) as info:
        settings.require_api_key()
    assert "api.wandb.ai" in info.value.message
    assert "WANDB_API_KEY" in info.value.hint


def test_malformed_netrc_is_a_config_error_without_the_key(tmp_path: Path) -> None:
    # A key pasted on a line of its own: the parser's message quotes it.
    netrc = write_netrc(
        tmp_path / "netrc", f"machine api.wandb.ai login user password old\n{KEY}\n"
    )
    with pytest.raises(netrc_module.NetrcParseError, match=KEY):
        netrc_module.netrc(str(netrc))

    with pytest.raises(ConfigError) as info:
        Settings.from_env({}, netrc_path=netrc)

    err = info.value
    assert str(netrc) in err.message
    assert err.hint
    shown = "".join(traceback.format_exception(err)) + repr(err) + str(err)
    assert KEY not in shown, "the API key leaked into the error or its traceback"


def test_repr_never_shows_the_key(tmp_path: Path) -> None:
    from_env = Settings.from_env({"WANDB_API_KEY": KEY}, netrc_path=tmp_path / "none")
    netrc = write_netrc(tmp_path / "netrc", f"machine api.wandb.ai login user password {KEY}\n")
    from_netrc = Settings.from_env({}, netrc_path=netrc)
    explicit = Settings(home=tmp_path, db_url=sqlite_url(tmp_path / "m.db"), api_key=KEY)

    for settings in (from_env, from_netrc, explicit, explicit.with_store(tmp_path / "o.db")):
        assert settings.api_key == KEY
        assert KEY not in repr(settings)
        assert KEY not in str(settings)
        assert KEY not in f"{settings!r} {settings}"


def test_with_store(tmp_path: Path) -> None:
    base = Settings(home=tmp_path / "a", db_url=sqlite_url(tmp_path / "a" / "mirror.db"))
    moved = base.with_store(tmp_path / "b" / "other.db")
    assert moved.home == (tmp_path / "b").resolve()
    assert moved.db_path == (tmp_path / "b" / "other.db").resolve()
    assert moved.base_url == base.base_url
