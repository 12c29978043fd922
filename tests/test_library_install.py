"""The client library and the `imgq` command need the base dependencies only: a program that
talks to imgq does not install the services' broker client, image library, metrics or torch."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
# What the services need and a client must not: each lives in an extra of pyproject.toml.
SERVICE_ONLY = ("aio_pika", "PIL", "prometheus_client", "numpy", "onnxruntime", "torch")

# Runs in a fresh interpreter in which importing any service-only module fails, as it would
# where only `pip install imgq` ran; then uses the library and the command's HTTP path.
_CLIENT_ONLY = f"""
import importlib.abc, sys
BLOCKED = {SERVICE_ONLY!r}

class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not installed)", name=name)
        return None

sys.meta_path.insert(0, Missing())
import imgq, imgq.aio
from imgq_cli import main
client = imgq.Client("http://127.0.0.1:9")
try:
    client.models()
except imgq.Unreachable:
    pass
else:
    raise SystemExit("a closed port answered")
try:
    main.main(["--help"])
except SystemExit as exit:
    assert exit.code == 0, exit.code
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, loaded
print("client-only ok")
"""


def test_base_dependencies_are_what_a_client_needs() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = {Requirement(dep).name for dep in project["dependencies"]}
    assert names == {"aiohttp", "orjson"}
    extras = project["optional-dependencies"]
    for extra in ("gateway", "classifier"):
        needed = {Requirement(dep).name for dep in extras[extra]}
        assert {"aio-pika", "pillow", "prometheus-client"} <= needed, extra


def test_library_and_command_run_without_the_service_dependencies() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CLIENT_ONLY],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "client-only ok" in done.stdout
