"""``sink_from_url``: the sink a deployment's URL names (``REDIS_URL``, ``DATABASE_URL``...)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from .._errors import ConfigurationError
from ._base import Sink
from ._memory import InMemorySink

if TYPE_CHECKING:
    from ._postgres import PostgresSink
    from ._redis import RedisSink

_SCHEMES = "postgresql://, postgres://, redis://, rediss://, sqlite:///path, memory://"


def sink_from_url(url: str) -> Sink:
    """
    The sink *url* names, by its scheme.

    ``postgresql://`` and ``postgres://`` build a ``PostgresSink``, ``redis://`` and
    ``rediss://`` a ``RedisSink``; ``sqlite:///relative/path`` and
    ``sqlite:////absolute/path`` (SQLAlchemy's form) a ``SQLiteSink``; ``memory://`` an
    ``InMemorySink``, for one process.

    Raises:
        ConfigurationError: The scheme is none of these, or the URL names no file.
    """
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme in ("postgresql", "postgres"):
        return postgres_sink_class()(url)
    if scheme in ("redis", "rediss"):
        return redis_sink_class()(url)
    if scheme == "sqlite":
        return _sqlite(url)
    if scheme == "memory":
        return InMemorySink()
    # The scheme only: the rest of a URL may hold a password.
    shown = f"{scheme}://..." if scheme else "a value without a scheme"
    msg = f"no sink for {shown}: the URL must start with one of {_SCHEMES}"
    raise ConfigurationError(msg)


def redis_sink_class() -> type[RedisSink]:
    """``RedisSink``, imported when asked for: it needs the optional redis-py."""
    try:
        from ._redis import RedisSink
    except ImportError as exc:
        msg = "RedisSink needs redis-py: pip install 'cobalt-async[redis]'"
        raise ImportError(msg) from exc
    return RedisSink


def postgres_sink_class() -> type[PostgresSink]:
    """``PostgresSink``, imported when asked for: it needs the optional asyncpg."""
    try:
        from ._postgres import PostgresSink
    except ImportError as exc:
        msg = "PostgresSink needs asyncpg: pip install 'cobalt-async[postgres]'"
        raise ImportError(msg) from exc
    return PostgresSink


def _sqlite(url: str) -> Sink:
    from ._sqlite import SQLiteSink

    # sqlite:///name is the relative path "name", sqlite:////abs/name the absolute "/abs/name".
    path = unquote(url.split("://", 1)[1])
    path = path[1:] if path.startswith("/") else path
    if not path or "?" in path:
        msg = "a sqlite URL names a file, as sqlite:///cobalt.db or sqlite:////var/lib/cobalt.db"
        raise ConfigurationError(msg)
    return SQLiteSink(path)
