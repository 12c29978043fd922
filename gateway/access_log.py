"""The gateway's access log: one line per HTTP request, through ``logging``.

aiohttp writes it after the response is sent (so the size and duration are final, even
for an event stream).  The values travel as fields of the record too, so in JSON mode
(``IMGQ_LOG_FORMAT=json``) each is its own key rather than text to parse.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from shared.errors import SettingsError
from shared.settings import GATEWAY, Environ, variable

_ACCESS_LOG = variable(
    "IMGQ_ACCESS_LOG", "true", GATEWAY, "`false`: no log line per HTTP request (the access log)"
)

# aiohttp's own name for it, so existing logging configuration still finds it.
ACCESS_LOGGER = logging.getLogger("aiohttp.access")


def access_log_enabled(env: Environ) -> bool:
    # The same spellings as IMGQ_DECLARE_TOPOLOGY.
    raw = env.get(_ACCESS_LOG.name, _ACCESS_LOG.default).strip().lower()
    if raw not in ("true", "false", "1", "0", "yes", "no"):
        raise SettingsError(f"{_ACCESS_LOG.name} must be true or false, got {raw!r}")
    return raw in ("true", "1", "yes")


class AccessLogger(AbstractAccessLogger):
    """``METHOD /path?query STATUS SIZE B SECONDS s CLIENT``, plus the same as fields."""

    @property
    def enabled(self) -> bool:
        # Lets aiohttp skip building the line when INFO is filtered out.
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        fields: dict[str, object] = {
            "method": request.method,
            "path": request.path_qs,
            "status": response.status,
            # Bytes sent, headers included (what aiohttp's own %b reports).
            "size": response.body_length,
            "duration": round(time, 6),
            "client": request.remote,
        }
        # A request about one job says which, as a field a search can match exactly.
        if isinstance(request, web.Request) and "job_id" in request.match_info:
            fields["job_id"] = request.match_info["job_id"]
        self.logger.info(
            "%s %s %d %d B %.3f s %s",
            request.method,
            request.path_qs,
            response.status,
            response.body_length,
            time,
            request.remote,
            extra=fields,
        )
