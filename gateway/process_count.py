"""How many gateway processes share the port (``IMGQ_GATEWAY_PROCESSES``): the setting alone.

A leaf module so that the settings can read it while :mod:`gateway.processes`, which runs the
processes, imports the settings.
"""

from __future__ import annotations

import socket
import sys
from typing import Final

from shared.errors import SettingsError
from shared.settings import GATEWAY, Environ, env_int, variable

_PROCESSES = variable(
    "IMGQ_GATEWAY_PROCESSES",
    1,
    GATEWAY,
    "gateway processes on the one port, each a whole gateway (its own broker connection, log "
    "replay and store), the kernel spreading connections among them (`SO_REUSEPORT`, Linux "
    "only); past 1, a supervisor process restarts any that dies",
)
# More would be a mistake (one process a core is the point), not a deployment.
MAX_PROCESSES: Final = 64


def processes_from_env(env: Environ, port: int) -> int:
    count = env_int(env, _PROCESSES.name, _PROCESSES.default, minimum=1, maximum=MAX_PROCESSES)
    if count > 1:
        if not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
            raise SettingsError(
                f"{_PROCESSES.name}={count} needs Linux (SO_REUSEPORT spreading connections "
                "among the processes); run one process per machine or container elsewhere"
            )
        if port == 0:
            raise SettingsError(
                f"{_PROCESSES.name}={count} needs a fixed IMGQ_HTTP_PORT, not 0: the processes "
                "share one port"
            )
    return count
