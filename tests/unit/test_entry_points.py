"""Every entry point answers --help and --version, refuses arguments it does not take, and
answers --help before importing anything heavy (torch, ONNX Runtime: no model is loaded)."""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from imgq_cli import main as cli
from shared.config_reference import SERVICES_DISTRIBUTION, all_variables, read_by
from shared.settings import CLASSIFIER, GATEWAY, SETUP, Service
from tests.service_settings import REPO

# Module run with -m, and what its --help must list: a service's variables, or those named.
ENTRY_POINTS: dict[str, Service | tuple[str, ...]] = {
    "gateway": GATEWAY,
    "classifier_service": CLASSIFIER,
    "compose.setup_broker": SETUP,
    "classifier_service.prepare_models": ("IMGQ_TORCHVISION_MODELS", "IMGQ_WEIGHTS_DIR"),
    "classifier_service.export": (
        "IMGQ_MODELS",
        "IMGQ_TORCHVISION_MODELS",
        "IMGQ_MODEL_CACHE",
        "IMGQ_WEIGHTS_DIR",
        "IMGQ_INFERENCE_THREADS",
    ),
    "compose.launch": (),
}
SERVICES = [module for module, lists in ENTRY_POINTS.items() if isinstance(lists, Service)]
HEAVY = ("torch", "torchvision", "onnxruntime", "onnx", "onnxscript")

# Runs a module as python -m does, then reports on stderr which heavy modules it imported.
_PROBE = f"""
import atexit, runpy, sys
atexit.register(lambda: print(
    "HEAVY:" + ",".join(sorted(name for name in {HEAVY!r} if name in sys.modules)),
    file=sys.stderr,
))
module = sys.argv[1]
sys.argv = [module, *sys.argv[2:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def _main(module: str) -> Callable[[Sequence[str]], Any]:
    """The module's main(argv), as python -m runs it (a package's __main__)."""
    imported = importlib.import_module(module)
    if hasattr(imported, "__path__"):
        imported = importlib.import_module(f"{module}.__main__")
    main: Callable[[Sequence[str]], Any] = imported.main
    return main


@pytest.mark.parametrize("module", list(ENTRY_POINTS))
def test_help_lists_the_variables_and_imports_nothing_heavy(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, module, "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m {module} ")
    assert "--version" in done.stdout
    heavy = done.stderr.rsplit("HEAVY:", 1)[1].strip()
    assert not heavy, f"--help imported {heavy}"
    lists = ENTRY_POINTS[module]
    if isinstance(lists, Service):
        words = " ".join(done.stdout.split())
        assert f"It takes no arguments: the {lists} is configured by these environment" in words
    all_variables()
    names = [var.name for var in read_by(lists)] if isinstance(lists, Service) else lists
    for name in names:
        assert f"\n  {name}  default: " in done.stdout, name


@pytest.mark.parametrize("module", list(ENTRY_POINTS))
def test_version(module: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        _main(module)(["--version"])
    assert exited.value.code == 0
    version = importlib.metadata.version(SERVICES_DISTRIBUTION)
    assert capsys.readouterr().out == f"python -m {module} {version}\n"


@pytest.mark.parametrize("module", list(ENTRY_POINTS))
def test_an_unknown_argument_is_a_usage_error(
    module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        _main(module)(["--no-such-option"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: python -m {module} ")
    assert "--no-such-option" in err


@pytest.mark.parametrize("module", SERVICES)
def test_a_service_refuses_positional_arguments_and_says_why(
    module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        _main(module)(["8080"])
    assert exited.value.code == 2
    assert "configured by environment variables (see --help)" in capsys.readouterr().err


def test_cli_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"imgq {importlib.metadata.version('imgq')}\n"
