"""Helpers to read typed settings from the environment.

Each service builds one frozen settings object at start-up from these; a bad
value fails at once with the variable's name, never later in the middle of a job.

Every variable is declared once, with ``variable()``, in the module that reads it: its
name, default, the services that read it and what it means.  That declaration is what
the code reads and what the configuration reference (``shared/config_reference.py``: the
README's table, each service's ``--help``) prints, so the two cannot drift apart.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

from shared.errors import SettingsError

Environ = Mapping[str, str]

_T = TypeVar("_T")


class Service(StrEnum):
    """The programs that read ``IMGQ_*`` variables, in the order the reference lists them."""

    GATEWAY = "gateway"
    CLASSIFIER = "classifier"
    # python -m compose.setup_broker, the one-shot step that creates users and the topology.
    SETUP = "setup"


GATEWAY = Service.GATEWAY
CLASSIFIER = Service.CLASSIFIER
SETUP = Service.SETUP


@dataclass(frozen=True, slots=True)
class Variable(Generic[_T]):
    """One environment variable, as declared where it is read."""

    name: str
    default: _T
    services: tuple[Service, ...]
    meaning: str
    # The default in words (Markdown), where the value alone would not say it: computed
    # defaults ("one per broker URL"), required values, sizes in bytes.
    shown: str | None = None

    @property
    def default_text(self) -> str:
        if self.shown is not None:
            return self.shown
        value: object = self.default
        if isinstance(value, tuple):
            return f"`{','.join(map(str, value))}`" if value else "unset"
        if isinstance(value, float):
            return f"`{value:g}`"
        return f"`{value}`"


# Every declared variable by name, filled as the modules that declare them are imported.
VARIABLES: dict[str, Variable[Any]] = {}


def variable(
    name: str,
    default: _T,
    services: Service | tuple[Service, ...],
    meaning: str,
    *,
    shown: str | None = None,
) -> Variable[_T]:
    """Declare ``name`` (at module level, beside the code that reads it) and register it."""
    if not name.startswith("IMGQ_"):
        raise ValueError(f"{name}: imgq's variables are named IMGQ_*")
    declared = Variable(
        name,
        default,
        services if isinstance(services, tuple) else (services,),
        meaning,
        shown,
    )
    # A module imported twice (python -m runs one as __main__) declares the same thing again.
    if VARIABLES.setdefault(name, declared) != declared:
        raise ValueError(f"{name} is declared twice, differently")
    return declared


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

_BROKER_URL = variable(
    "IMGQ_BROKER_URL",
    DEFAULT_BROKER_URL,
    (GATEWAY, CLASSIFIER, SETUP),
    "the broker's AMQP URL (user and password included) when `IMGQ_BROKER_URLS` is unset; "
    "setup only counts the nodes (it connects with `IMGQ_ADMIN_URL`)",
)
_BROKER_URLS: Variable[tuple[str, ...]] = variable(
    "IMGQ_BROKER_URLS",
    (),
    (GATEWAY, CLASSIFIER, SETUP),
    "every node of a broker cluster, comma-separated, in place of `IMGQ_BROKER_URL`: "
    "services use a live one and move to another when theirs goes",
)


def broker_urls(env: Environ) -> tuple[str, ...]:
    """Every node a service may use: ``IMGQ_BROKER_URLS`` (comma-separated, one per node of
    a cluster), else the single ``IMGQ_BROKER_URL``.  Services connect to a live one and move
    to another when theirs goes (``shared/connect.py``)."""
    if env.get(_BROKER_URLS.name, "").strip():
        urls = env_list(env, _BROKER_URLS.name, _BROKER_URLS.default)
    else:
        urls = (env_str(env, _BROKER_URL.name, _BROKER_URL.default),)
    for url in urls:
        if not url.startswith(("amqp://", "amqps://")):
            raise SettingsError(f"broker URLs must start with amqp:// or amqps://, got {url!r}")
    return urls


def process_env() -> Environ:
    return os.environ
