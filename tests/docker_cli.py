"""The docker CLI with its compose plugin, for the deploy tests that let it read a compose file;
such a test skips, saying why, where either is missing (no Docker engine is needed)."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def docker_compose() -> str:
    """The path of ``docker``, once ``docker compose`` answers; else the test is skipped."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker is not on PATH")
    probe = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=60, check=False
    )
    if probe.returncode != 0:
        pytest.skip("the docker CLI has no compose plugin")
    return docker
