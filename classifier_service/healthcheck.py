"""Container health check: ``python -m classifier_service.healthcheck [--live | --ready]``.

``--live`` (the default): the replica's loop is alive and it is not stalled: restart it when
this fails.  ``--ready``: alive, connected to the broker and consuming: send it no work (and
do not count it in a rollout) while this fails, but do not restart it for that.  Both read the
health file the replica rewrites every heartbeat interval (``classifier_service/health.py``);
exit status 0 = yes, 1 = no, with the reason on stderr.  Imports no torch: it runs often.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from classifier_service.health import liveness, readiness
from shared.settings import env_str, process_env


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m classifier_service.healthcheck",
        description="Is the classifier replica alive (the default), or ready for work?",
    )
    probe = parser.add_mutually_exclusive_group()
    probe.add_argument("--live", action="store_true", help="liveness (the default)")
    probe.add_argument("--ready", action="store_true", help="readiness")
    args = parser.parse_args(argv)
    # The same variable, and default, as the replica's settings (classifier_service/settings.py);
    # not imported from there, which would load far more than a probe needs.
    path = Path(env_str(process_env(), "IMGQ_HEALTH_FILE", "/tmp/imgq-classifier.alive"))
    problem = readiness(path) if args.ready else liveness(path)
    if problem is not None:
        print(f"{'not ready' if args.ready else 'unhealthy'}: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
