"""Where the local Redis and PostgreSQL that `make services` starts are, and whether they answer.

The fleet benchmarks read the URLs; the test fixtures (tests/services.py), which start private
servers of their own, share the health checks. A URL comes from
`QWED_GUARD_REDIS_URL` / `QWED_GUARD_POSTGRES_URL`, else from the env file scripts/services.sh
writes, else the default local ports.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "DEFAULT_URLS",
    "HOW_TO_START",
    "SERVICES_DIR",
    "postgres_answers",
    "redis_answers",
    "service_url",
]

SERVICES_DIR = Path(
    os.environ.get("QWED_GUARD_SERVICES_DIR")
    or Path(os.environ.get("TMPDIR") or "/tmp") / "qwed-guard-services"
)
DEFAULT_URLS = {
    "QWED_GUARD_REDIS_URL": "redis://127.0.0.1:6379/0",
    "QWED_GUARD_POSTGRES_URL": "postgresql://qwed_guard:pg-local-7c3e91@127.0.0.1:5432/qwed_guard",
}
HOW_TO_START = "start it with `make services` (scripts/services.sh)"


def service_url(name: str) -> str:
    """The URL of a service: from the environment, the services env file, or the default."""
    if os.environ.get(name):
        return os.environ[name]
    env_file = SERVICES_DIR / "env"
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == name and value.strip():
                return value.strip()
    return DEFAULT_URLS[name]


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """True if a Redis server answers PING at `url`."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def postgres_answers(url: str, timeout: int = 2) -> bool:
    """True if a PostgreSQL server accepts a connection at `url`."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=timeout):
            return True
    except psycopg.Error:
        return False
