"""The gateway's callback settings: the secret for jobs submitted without a token, the networks
callbacks may reach besides public addresses, and the retry schedule (``gateway/webhooks.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from gateway.callbacks import AddressPolicy, parse_networks
from shared.errors import SettingsError
from shared.settings import GATEWAY, Environ, Variable, env_list, variable
from shared.topology import WebhookRetries

# An HMAC key shorter than this is guessable offline from one signed request.
MIN_SECRET_CHARS: Final = 32

_SECRET = variable(
    "IMGQ_WEBHOOK_SECRET",
    "",
    GATEWAY,
    f"signs the callbacks of jobs submitted without an API token (at least {MIN_SECRET_CHARS} "
    "characters); a token's jobs are signed with a secret derived from the token; with neither, "
    "a `callback_url` is refused (`422`)",
    shown="unset",
)
_ALLOW_NETWORKS: Variable[tuple[str, ...]] = variable(
    "IMGQ_WEBHOOK_ALLOW_NETWORKS",
    (),
    GATEWAY,
    "networks callbacks may reach although they are not public, comma-separated CIDRs (e.g. "
    "`10.20.0.0/16`); unset = public addresses only: never loopback, private, link-local, "
    "multicast or reserved ones",
)


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    # Kept out of repr(), like the API tokens, so a logged settings object never leaks it.
    secret: str | None = field(default=None, repr=False)
    policy: AddressPolicy = field(default_factory=AddressPolicy)
    retries: WebhookRetries = field(default_factory=WebhookRetries)

    @classmethod
    def from_env(cls, env: Environ) -> WebhookSettings:
        secret = env.get(_SECRET.name, "").strip() or None
        if secret is not None and len(secret) < MIN_SECRET_CHARS:
            raise SettingsError(
                f"{_SECRET.name} must have at least {MIN_SECRET_CHARS} characters "
                "(`openssl rand -hex 32` makes a good one)"
            )
        networks = env_list(env, _ALLOW_NETWORKS.name, _ALLOW_NETWORKS.default)
        return cls(
            secret=secret,
            policy=AddressPolicy(parse_networks(_ALLOW_NETWORKS.name, networks)),
            retries=WebhookRetries.from_env(env),
        )
