"""The lock files the container images install from, against pyproject.toml and the Dockerfiles.

``requirements/lock`` writes ``requirements/*.lock`` with pip-compile. Nothing here resolves a
package or reaches an index: the tests read the files, so they say when pyproject.toml moved on
without the locks (run ``requirements/lock`` again) or a Dockerfile stopped installing from them.
"""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from dataclasses import dataclass
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

from tests.conftest import REPO
from tests.deploy.test_deploy_files import parse_dockerfile

LOCK_SCRIPT = REPO / "requirements" / "lock"
# Lock file -> the extras of pyproject.toml it must cover besides the base dependencies.
LOCKS: dict[str, tuple[str, ...]] = {
    "requirements/gateway.lock": ("gateway", "otel"),
    "requirements/classifier.lock": ("classifier", "otel"),
}
# Dockerfile -> the lock file its image installs.
IMAGES = {
    "Dockerfile.gateway": "requirements/gateway.lock",
    "Dockerfile.classifier": "requirements/classifier.lock",
}
# Never in a serving image: the export stage alone has torch (and the CUDA libraries it drags).
EXPORT_ONLY = {"torch", "torchvision", "onnx", "onnxscript", "triton"}
SHA256 = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Pin:
    version: Version
    hashes: tuple[str, ...]


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def logical_lines(text: str) -> list[str]:
    """Requirement lines with their continuations joined and pip-compile's comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append((pending + line).strip())
        pending = ""
    assert not pending, "the file ends inside a line continuation"
    return lines


def read_lock(path: str) -> dict[NormalizedName, Pin]:
    pins: dict[NormalizedName, Pin] = {}
    for line in logical_lines((REPO / path).read_text(encoding="utf-8")):
        assert not line.startswith("-"), f"{path}: an option line ({line!r}) would change pip"
        spec, *hashes = re.split(r"\s+--hash=", line)
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{path} pins {name} twice"
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1, f"{path}: {spec!r} is not one exact version"
        assert specifiers[0].operator == "==", f"{path}: {spec!r} is not pinned with =="
        assert "*" not in specifiers[0].version, f"{path}: {spec!r} is a wildcard"
        assert requirement.url is None, f"{path}: {spec!r} installs from a URL"
        pins[name] = Pin(Version(specifiers[0].version), tuple(h.strip() for h in hashes))
    assert pins, f"{path} pins nothing"
    return pins


def runtime_requirements(extras: tuple[str, ...]) -> list[Requirement]:
    project = pyproject()["project"]
    specs = list(project["dependencies"])
    for extra in extras:
        specs += project["optional-dependencies"][extra]
    requirements = [Requirement(spec) for spec in specs]
    return [r for r in requirements if r.marker is None or r.marker.evaluate()]


def pip_installs(args: str) -> list[list[str]]:
    """Each `pip install ...` of a RUN as argv (after `pip install`), whatever `env` precedes it."""
    commands: list[list[str]] = [[]]
    for token in shlex.split(args):
        if token in {"&&", "||", ";", "|"}:
            commands.append([])
        else:
            commands[-1].append(token)
    found = []
    for tokens in commands:
        for i in range(len(tokens) - 1):
            if tokens[i].rsplit("/", 1)[-1] in {"pip", "pip3"} and tokens[i + 1] == "install":
                found.append(tokens[i + 2 :])
                break
    return found


def option_values(argv: list[str], *names: str) -> list[str]:
    values = []
    for i, token in enumerate(argv):
        for name in names:
            if token == name and i + 1 < len(argv):
                values.append(argv[i + 1])
            elif token.startswith(name + "="):
                values.append(token.split("=", 1)[1])
    return values


def stage_installs(dockerfile: str) -> list[list[list[str]]]:
    """Per build stage, every `pip install` its RUN instructions make, in order."""
    per_stage: list[list[list[str]]] = []
    for keyword, args in parse_dockerfile(dockerfile):
        if keyword == "FROM":
            per_stage.append([])
        elif keyword == "RUN":
            per_stage[-1].extend(pip_installs(args))
    return per_stage


def is_lock_install(argv: list[str], lock: str) -> bool:
    return "--require-hashes" in argv and lock in option_values(argv, "-r", "--requirement")


# --------------------------------------------------------------------------- the lock files


@pytest.mark.parametrize(("lock", "extras"), LOCKS.items())
def test_lock_pins_every_runtime_dependency_within_pyproject(
    lock: str, extras: tuple[str, ...]
) -> None:
    pins = read_lock(lock)
    for requirement in runtime_requirements(extras):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{lock} does not pin {name}: run requirements/lock"
        version = pins[name].version
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock} pins {name}=={version}, outside pyproject.toml's {requirement}: "
            "run requirements/lock"
        )


@pytest.mark.parametrize("lock", LOCKS)
def test_every_pin_is_hashed(lock: str) -> None:
    # The Dockerfiles install with --require-hashes: a pin without a hash fails the build.
    for name, pin in read_lock(lock).items():
        assert pin.hashes, f"{lock}: {name} has no --hash"
        for value in pin.hashes:
            assert SHA256.fullmatch(value), f"{lock}: {name} has a hash pip would not take: {value}"


@pytest.mark.parametrize("lock", LOCKS)
def test_lock_pins_the_build_backend(lock: str) -> None:
    # The images build the project with --no-build-isolation, from what the lock installed.
    pins = read_lock(lock)
    for spec in pyproject()["build-system"]["requires"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{lock} does not pin the build requirement {name}"
        assert requirement.specifier.contains(pins[name].version, prereleases=True)


def test_serving_locks_have_no_torch() -> None:
    for lock in LOCKS:
        pins = read_lock(lock)
        assert not EXPORT_ONLY & set(pins), f"{lock} pins {sorted(EXPORT_ONLY & set(pins))}"
        assert not [n for n in pins if n.startswith("nvidia-")], f"{lock} pins CUDA libraries"
    gateway = read_lock("requirements/gateway.lock")
    classifier_only = {canonicalize_name(r.name) for r in runtime_requirements(("classifier",))}
    classifier_only -= {canonicalize_name(r.name) for r in runtime_requirements(("gateway",))}
    assert classifier_only >= {"onnxruntime", "numpy"}
    assert not classifier_only & set(gateway), "the gateway image installs the classifier's needs"


def test_both_images_run_the_same_versions_of_what_they_share() -> None:
    gateway = read_lock("requirements/gateway.lock")
    classifier = read_lock("requirements/classifier.lock")
    for name in gateway.keys() & classifier.keys():
        assert gateway[name].version == classifier[name].version, (
            f"{name}: {gateway[name].version} in the gateway image, "
            f"{classifier[name].version} in the classifier's"
        )


def test_locks_come_from_the_lock_script() -> None:
    assert LOCK_SCRIPT.is_file()
    assert os.access(LOCK_SCRIPT, os.X_OK), "requirements/lock must be executable"
    script = LOCK_SCRIPT.read_text(encoding="utf-8")
    assert "--generate-hashes" in script
    for lock in LOCKS:
        assert lock in script, f"requirements/lock does not write {lock}"
        header = (REPO / lock).read_text(encoding="utf-8").split("\n\n", 1)[0]
        assert "requirements/lock" in header, f"{lock} says another command wrote it"


# --------------------------------------------------------------------------- the Dockerfiles


@pytest.mark.parametrize(("dockerfile", "lock"), IMAGES.items())
def test_image_installs_its_lock_and_nothing_unpinned(dockerfile: str, lock: str) -> None:
    final = stage_installs(dockerfile)[-1]
    assert final, f"{dockerfile}'s image installs nothing"
    assert is_lock_install(final[0], lock), (
        f"{dockerfile}: the image's first pip install must be -r {lock} --require-hashes"
    )
    for argv in final[1:]:
        # After the lock, only the project itself, adding no package of its own choosing.
        assert "--no-deps" in argv, f"{dockerfile}: pip install {' '.join(argv)} may add packages"
        assert "--no-build-isolation" in argv, (
            f"{dockerfile}: pip install {' '.join(argv)} would fetch an unpinned build backend"
        )
    copies = [args for keyword, args in parse_dockerfile(dockerfile) if keyword == "COPY"]
    assert any(shlex.split(args)[0] == lock for args in copies), f"{dockerfile} never copies {lock}"


def test_export_stage_starts_from_the_classifier_lock() -> None:
    *builders, _ = stage_installs("Dockerfile.classifier")
    installs = [argv for stage in builders for argv in stage]
    assert installs, "the export stage installs nothing"
    # The exports are checked against the very ONNX Runtime (and numpy, Pillow) the image serves
    # them with; torch and the exporter come after, constrained not to move those.
    assert is_lock_install(installs[0], "requirements/classifier.lock")
    for argv in installs[1:-1]:
        assert option_values(argv, "-c", "--constraint"), (
            f"pip install {' '.join(argv)} is not held to the locked versions"
        )
    assert "--no-deps" in installs[-1], "the project itself must add no package"
