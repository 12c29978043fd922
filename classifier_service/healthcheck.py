"""Container health check: ``python -m classifier_service.healthcheck``.

Healthy while the replica's heartbeat loop keeps touching its health file, which it
does only after a heartbeat reached the broker.  Imports no torch: it runs often.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from shared.settings import env_float, env_str, process_env


def main() -> int:
    env = process_env()
    path = Path(env_str(env, "IMGQ_HEALTH_FILE", "/tmp/imgq-classifier.alive"))
    # Three missed heartbeats in a row mean the replica is stuck or cut off from the broker.
    max_age = 3 * env_float(env, "IMGQ_HEARTBEAT_INTERVAL", 5.0, minimum=0.1)
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        print(f"unhealthy: {path} does not exist", file=sys.stderr)
        return 1
    if age > max_age:
        print(f"unhealthy: last heartbeat {age:.0f} s ago (limit {max_age:.0f} s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
