"""One typed settings object, built once at the edge (the CLI, ``Api()``, a test).

Nothing below this module reads ``os.environ``: code receives a ``Settings`` and reads its
fields. Credentials follow W&B's own conventions so that a laptop already set up for
``wandb`` needs nothing more: ``WANDB_API_KEY``, else the ``~/.netrc`` entry for the API
host (what ``wandb login`` writes); ``WANDB_BASE_URL``, ``WANDB_ENTITY``,
``WANDB_PROJECT``. The key is kept out of ``repr`` so it never reaches logs or tracebacks.
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse

from mirror.errors import ConfigError

DEFAULT_BASE_URL = "https://api.wandb.ai"
APP_NAME = "wandb-mirror"


def default_home() -> Path:
    """The platform's user data folder for wandb-mirror (e.g. ~/.local/share/wandb-mirror)."""
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


@dataclass(frozen=True)
class Settings:
    """Where the store lives and which upstream to talk to.

    Build with :meth:`from_env` at the edge; pass explicit values in tests.
    """

    home: Path
    db_url: str
    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = field(default=None, repr=False)
    entity: str | None = None
    project: str | None = None

    @property
    def db_path(self) -> Path | None:
        """The SQLite file behind ``db_url``, or None for other databases / in-memory."""
        return sqlite_path(self.db_url)

    @property
    def blobs_dir(self) -> Path:
        """Content-addressed file cache, next to the database."""
        path = self.db_path
        return (path.parent if path else self.home) / "blobs"

    @property
    def api_host(self) -> str:
        return urlparse(self.base_url).hostname or ""

    def with_store(self, path: str | os.PathLike[str]) -> Settings:
        """The same settings with the store at ``path`` (a SQLite file)."""
        p = Path(path).expanduser().resolve()
        return replace(self, home=p.parent, db_url=sqlite_url(p))

    def require_api_key(self) -> str:
        if not self.api_key:
            raise ConfigError(
                f"no API key for {self.api_host or self.base_url}",
                hint="Set WANDB_API_KEY, or run `wandb login` to write ~/.netrc.",
            )
        return self.api_key

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        netrc_path: Path | None = None,
    ) -> Settings:
        """Read the environment (and ~/.netrc for the key) once."""
        env = os.environ if environ is None else environ
        home_raw = env.get("MIRROR_HOME")
        home = Path(home_raw).expanduser() if home_raw else default_home()
        db_url = env.get("MIRROR_DB_URL") or sqlite_url(home / "mirror.db")
        base_url = (env.get("WANDB_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        parsed = urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            shown = base_url.split("@")[-1]  # never echo credentials in a URL
            raise ConfigError(
                f"WANDB_BASE_URL is not an http(s) URL: {shown!r}",
                hint="Use e.g. https://api.wandb.ai or http://127.0.0.1:8080.",
            )
        api_key = env.get("WANDB_API_KEY") or None
        if api_key is None:
            if netrc_path is None:
                netrc_path = Path(env.get("NETRC") or Path("~/.netrc").expanduser())
            api_key = _key_from_netrc(netrc_path, parsed.hostname)
        return cls(
            home=home,
            db_url=db_url,
            base_url=base_url,
            api_key=api_key,
            entity=env.get("WANDB_ENTITY") or None,
            project=env.get("WANDB_PROJECT") or None,
        )


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{Path(path).expanduser()}"


def sqlite_path(url: str) -> Path | None:
    """The file path of a ``sqlite:///...`` URL (None for ``:memory:`` or other dialects)."""
    if not url.startswith("sqlite"):
        return None
    _, _, rest = url.partition(":///")
    rest = rest.split("?", 1)[0]
    if not rest or rest == ":memory:":
        return None
    return Path(rest)


def _key_from_netrc(path: Path, host: str) -> str | None:
    """The password of the netrc entry for ``host``, as ``wandb login`` writes it."""
    try:
        if not path.is_file():
            return None
        auth = netrc.netrc(str(path)).authenticators(host)
    except (OSError, netrc.NetrcParseError) as exc:
        # The message of NetrcParseError quotes the offending line, which may hold a key.
        raise ConfigError(
            f"cannot read {path} ({type(exc).__name__})",
            hint="Fix the file's syntax or set WANDB_API_KEY instead.",
        ) from None
    if auth is None:
        return None
    return auth[2] or None
