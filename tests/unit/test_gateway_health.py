"""The gateway's liveness: a background task that dies ends the process, non-zero, so that its
supervisor starts another (a broker outage, which makes it unready and never dead:
tests/service/test_gateway_health.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from compose.broker import free_port
from tests.conftest import REPO

_DYING_SESSION = """
import sys
import shared.session

async def dies(self):
    raise RuntimeError("the session loop broke")

shared.session.SessionLoop.run = dies
from gateway.__main__ import main
main([])
"""


def test_a_gateway_whose_session_loop_dies_exits_non_zero_saying_why() -> None:
    env = {
        **os.environ,
        "IMGQ_HTTP_PORT": str(free_port()),
        # Nothing needs to answer: the session loop dies before it connects.
        "IMGQ_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/",
    }
    done = subprocess.run(
        [sys.executable, "-c", _DYING_SESSION],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 70, done.stderr
    assert "background task 'broker-session' died: RuntimeError('the session loop broke')" in (
        done.stderr
    )
    assert "stopping the gateway" in done.stderr
