"""Helpers to read typed settings from the environment.

Each service builds one frozen settings object at start-up from these; a bad
value fails at once with the variable's name, never later in the middle of a job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from shared.errors import SettingsError

Environ = Mapping[str, str]


def env_str(env: Environ, name: str, default: str) -> str:
    value = env.get(name, default).strip()
    if not value:
        raise SettingsError(f"{name} must not be empty")
    return value


def env_int(
    env: Environ, name: str, default: int, *, minimum: int = 0, maximum: int | None = None
) -> int:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{name} must be at most {maximum}, got {value}")
    return value


def env_float(env: Environ, name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def env_list(env: Environ, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    items = tuple(item.strip() for item in raw.split(",") if item.strip())
    if not items:
        raise SettingsError(f"{name} must name at least one item")
    return items


DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"


def broker_urls(env: Environ) -> tuple[str, ...]:
    """Every node a service may use: ``IMGQ_BROKER_URLS`` (comma-separated, one per node of
    a cluster), else the single ``IMGQ_BROKER_URL``.  Services connect to a live one and move
    to another when theirs goes (``shared/connect.py``)."""
    if env.get("IMGQ_BROKER_URLS", "").strip():
        urls = env_list(env, "IMGQ_BROKER_URLS", ())
    else:
        urls = (env_str(env, "IMGQ_BROKER_URL", DEFAULT_BROKER_URL),)
    for url in urls:
        if not url.startswith(("amqp://", "amqps://")):
            raise SettingsError(f"broker URLs must start with amqp:// or amqps://, got {url!r}")
    return urls


def process_env() -> Environ:
    return os.environ
