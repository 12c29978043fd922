"""The client distribution installs alone: its wheel, built from client/, installed into a
fresh virtual environment with nothing else, gives the ``imgq`` library and command, and
none of the services' packages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from tests.conftest import REPO

CLIENT = REPO / "client"
# The services' top-level packages (the root pyproject.toml's distribution).
SERVICES = ("gateway", "shared", "compose", "bench", "classifier_service")

# Run by the fresh environment's interpreter, outside the checkout.
_PROBE = f"""
import importlib.metadata, importlib.util, sys
import imgq
from imgq_cli import main
for name in {SERVICES!r} + ("aiohttp", "orjson"):
    assert importlib.util.find_spec(name) is None, f"{{name}} is importable"
files = importlib.metadata.distribution("imgq").files or []
assert {{f.parts[0] for f in files if f.suffix == ".py"}} == {{"imgq", "imgq_cli"}}
try:
    imgq.Client("http://127.0.0.1:9", max_retries=0).models()
except imgq.Unreachable:
    pass
else:
    raise SystemExit("a closed port answered")
try:
    imgq.AsyncClient
except ImportError as exc:
    assert "imgq[async]" in str(exc), exc
else:
    raise SystemExit("AsyncClient without aiohttp")
print("client-only ok")
"""


def test_the_client_needs_the_standard_library_only() -> None:
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["name"] == "imgq"
    assert project["dependencies"] == []
    async_extra = {Requirement(dep).name for dep in project["optional-dependencies"]["async"]}
    assert async_extra == {"aiohttp"}
    services = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert services["name"] != "imgq"
    assert "scripts" not in services  # the `imgq` command is the client's


def test_the_wheel_installs_alone_into_a_fresh_environment(tmp_path: Path) -> None:
    # Built from a copy, so the build leaves nothing in the checkout; with the setuptools
    # already installed here, so nothing is fetched.
    source = tmp_path / "client"
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    wheels = tmp_path / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(source))  # fmt: skip
    [wheel] = wheels.glob("imgq-*.whl")
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    python = venv / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         "--no-index", str(wheel))  # fmt: skip

    assert "client-only ok" in _run(str(python), "-c", _PROBE, cwd=tmp_path)
    imgq = str(venv / "bin" / "imgq")
    assert _run(imgq, "--help", cwd=tmp_path).startswith("usage: imgq ")
    assert _run(imgq, "--version", cwd=tmp_path).startswith("imgq ")
    done = subprocess.run(
        [imgq, "classify", "cat.jpg", "-m", "m", "--url", "http://127.0.0.1:9", "--max-retries",
         "0"],
        cwd=tmp_path, env=_bare_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: cannot reach the imgq server at http://127.0.0.1:9")


def _bare_env() -> dict[str, str]:
    """No PYTHONPATH (nothing of the checkout on the path), no user site."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "PYTHONNOUSERSITE": "1"}


def _run(*argv: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        argv,
        cwd=cwd or REPO,
        env=_bare_env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}"
    return done.stdout
