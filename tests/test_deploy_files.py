"""Static checks of the container deployment files.

No Docker engine is available where the suite runs, so nothing here builds or starts a
container: the tests read compose/compose.yaml, the two Dockerfiles and .dockerignore, and
check them against the repository they are meant to package.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from compose.permissions import CLASSIFIER_USER, GATEWAY_USER

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "compose" / "compose.yaml"
DOCKERIGNORE = REPO / ".dockerignore"
PYPROJECT = REPO / "pyproject.toml"

# Service name -> (Dockerfile, the module its container must run).
BUILT_SERVICES = {
    "gateway": ("Dockerfile.gateway", "gateway"),
    "classifier": ("Dockerfile.classifier", "classifier_service"),
}
DOCKERFILES = [dockerfile for dockerfile, _ in BUILT_SERVICES.values()]

# The classifier drains in-flight jobs for up to this long after SIGTERM.
CLASSIFIER_DRAIN_SECONDS = 20.0
# Docker's own grace period when stop_grace_period is not set.
DOCKER_DEFAULT_GRACE_SECONDS = 10.0

# Hosts a URL in these files may name: never a package index or any other outside host.
ALLOWED_URL_HOSTS = {"127.0.0.1", "localhost", "broker"}


# --------------------------------------------------------------------------- helpers


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "compose.yaml must be a mapping"
    return data


def service(name: str) -> dict[str, Any]:
    services = load_compose().get("services") or {}
    assert name in services, f"compose.yaml has no service {name!r}"
    svc = services[name]
    assert isinstance(svc, dict), f"service {name!r} must be a mapping"
    return svc


_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<default>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: str, env: Mapping[str, str] | None = None) -> str:
    """Expand Compose's ${VAR}, ${VAR:-default} and $$ the way a fresh checkout sees them."""
    env = env or {}

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        op = match["op"]
        if name in env and (env[name] or op != ":-"):
            return env[name]
        if op in (":-", "-"):
            return match["default"]
        if op in (":?", "?"):
            raise AssertionError(f"${{{name}}} is required and has no default")
        return ""

    return _VAR.sub(replace, value)


def environment(svc: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment as a dict (Compose accepts a mapping or a KEY=VALUE list)."""
    raw = svc.get("environment") or {}
    if isinstance(raw, list):
        pairs = (item.split("=", 1) for item in raw)
        raw = {pair[0]: pair[1] if len(pair) > 1 else None for pair in pairs}
    return {key: "" if value is None else str(value) for key, value in raw.items()}


def duration_seconds(value: str | int | float) -> float:
    if isinstance(value, int | float):
        return float(value)
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", value)
    assert parts, f"{value!r} is not a duration"
    assert "".join(n + u for n, u in parts) == value, f"{value!r} is not a duration"
    return sum(float(number) * units[unit] for number, unit in parts)


def parse_dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw_line in (REPO / name).read_text(encoding="utf-8").splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            # Docker skips comment and blank lines inside a continuation too.
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, f"{name} ends inside a line continuation"
    return instructions


def instructions_named(dockerfile: str, keyword: str) -> list[str]:
    return [args for kw, args in parse_dockerfile(dockerfile) if kw == keyword]


def command_argv(text: str) -> list[str]:
    """A CMD/HEALTHCHECK command as argv: JSON exec form, or shell form split like sh would."""
    text = text.strip()
    if text.startswith("["):
        argv = json.loads(text)
        assert isinstance(argv, list), f"exec form must be a JSON list: {text}"
        assert all(isinstance(arg, str) for arg in argv), f"exec form must be strings: {text}"
        return argv
    return shlex.split(text)


def dockerfile_cmd(dockerfile: str) -> list[str]:
    cmds = instructions_named(dockerfile, "CMD")
    assert cmds, f"{dockerfile} has no CMD"
    return command_argv(cmds[-1])  # only the last CMD takes effect


def dockerfile_healthcheck(dockerfile: str) -> list[str]:
    checks = instructions_named(dockerfile, "HEALTHCHECK")
    assert checks, f"{dockerfile} has no HEALTHCHECK"
    args = checks[-1]
    while args.startswith("--"):
        _, _, args = args.partition(" ")
        args = args.lstrip()
    keyword, _, command = args.partition(" ")
    assert keyword.upper() == "CMD", f"{dockerfile}: HEALTHCHECK must run a command, got {args!r}"
    return command_argv(command)


def compose_healthcheck(svc: Mapping[str, Any]) -> list[str]:
    test = (svc.get("healthcheck") or {}).get("test")
    if isinstance(test, str):
        return shlex.split(test)
    assert isinstance(test, list), f"healthcheck.test must be a list or string, got {test!r}"
    assert test, "healthcheck.test is empty"
    if test[0] == "CMD":
        return [str(arg) for arg in test[1:]]
    if test[0] == "CMD-SHELL":
        return shlex.split(test[1])
    raise AssertionError(f"healthcheck.test must start with CMD or CMD-SHELL, got {test[0]!r}")


def service_command(name: str) -> list[str]:
    """What the service's container runs: compose's command if set, else the image's CMD."""
    command = service(name).get("command")
    if command is not None:
        return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
    return dockerfile_cmd(BUILT_SERVICES[name][0])


def python_module(argv: list[str]) -> str:
    """The module of `python -m MODULE ...`; fails if argv is anything else."""
    assert argv, "empty command"
    assert PurePosixPath(argv[0]).name in {"python", "python3", "python3.11"}, argv
    assert "-m" in argv, f"{argv} does not run a module"
    index = argv.index("-m")
    assert index + 1 < len(argv), f"{argv}: -m without a module"
    return argv[index + 1]


def module_source(module: str) -> Path | None:
    """The file `python -m module` would run from the repo root, if it exists."""
    base = REPO.joinpath(*module.split("."))
    for candidate in (base / "__main__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _pattern_matches(path: str, pattern: str) -> bool:
    if pattern.startswith("**/"):
        rest = pattern[3:]
        parts = path.split("/")
        return any(fnmatch.fnmatchcase("/".join(parts[i:]), rest) for i in range(len(parts)))
    return fnmatch.fnmatchcase(path, pattern)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Approximately Docker's rule: last matching pattern wins, a folder hides what is in it."""
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        if pattern.startswith("./"):
            pattern = pattern[2:]
        if any(_pattern_matches(prefix, pattern) for prefix in prefixes):
            ignored = not negate
    return ignored


def copy_sources(dockerfile: str) -> list[str]:
    sources: list[str] = []
    for args in instructions_named(dockerfile, "COPY") + instructions_named(dockerfile, "ADD"):
        tokens = command_argv(args) if args.startswith("[") else shlex.split(args)
        flags = [t for t in tokens if t.startswith("--")]
        paths = [t for t in tokens if not t.startswith("--")]
        if any(flag.startswith("--from=") for flag in flags):
            continue  # copies from another stage or image, not from the build context
        assert len(paths) >= 2, f"{dockerfile}: COPY needs a source and a destination: {args}"
        sources.extend(paths[:-1])
    return sources


def walk_strings(node: Any) -> list[str]:
    if isinstance(node, Mapping):
        return [s for k, v in node.items() for s in [str(k), *walk_strings(v)]]
    if isinstance(node, list):
        return [s for item in node for s in walk_strings(item)]
    return [] if node is None else [str(node)]


# --------------------------------------------------------------------------- compose.yaml


def test_compose_defines_the_three_services() -> None:
    services = load_compose().get("services")
    assert isinstance(services, dict)
    assert {"broker", "gateway", "classifier"} <= set(services)


def test_classifier_can_be_scaled() -> None:
    svc = service("classifier")
    assert "container_name" not in svc, "a fixed container_name breaks --scale"
    for port in svc.get("ports") or []:
        if isinstance(port, dict):
            assert "published" not in port, f"fixed host port {port} breaks --scale"
        else:
            assert ":" not in interpolate(str(port)), f"fixed host port {port!r} breaks --scale"
    replicas = (svc.get("deploy") or {}).get("replicas")
    assert isinstance(replicas, int), "classifier should set deploy.replicas"
    assert replicas >= 2


@pytest.mark.parametrize("name", ["broker", "lb", "gateway", "classifier"])
def test_every_service_has_a_healthcheck(name: str) -> None:
    healthcheck = service(name).get("healthcheck")
    assert isinstance(healthcheck, dict), f"{name} has no healthcheck"
    assert not healthcheck.get("disable"), f"{name} disables its healthcheck"
    assert compose_healthcheck(service(name)), f"{name}'s healthcheck runs nothing"


def test_broker_healthcheck_uses_rabbitmq_diagnostics() -> None:
    argv = compose_healthcheck(service("broker"))
    assert argv[0] == "rabbitmq-diagnostics"
    assert {"ping", "check_port_connectivity", "check_running"} & set(argv[1:])


@pytest.mark.parametrize("name", sorted(BUILT_SERVICES))
def test_service_waits_for_a_healthy_broker(name: str) -> None:
    depends_on = service(name).get("depends_on")
    assert isinstance(depends_on, dict), f"{name}: depends_on must use the long form"
    assert (depends_on.get("broker") or {}).get("condition") == "service_healthy"


def test_no_guest_credentials() -> None:
    for text in walk_strings(load_compose()):
        assert "guest" not in interpolate(text).lower(), f"guest credentials in {text!r}"
    for dockerfile in DOCKERFILES:
        for keyword, args in parse_dockerfile(dockerfile):
            assert "guest" not in args.lower(), f"{dockerfile}: {keyword} {args}"


def test_broker_has_its_own_user() -> None:
    env = environment(service("broker"))
    user = interpolate(env.get("RABBITMQ_DEFAULT_USER", ""))
    assert user, "RABBITMQ_DEFAULT_USER must be set"
    assert user != "guest"
    assert interpolate(env.get("RABBITMQ_DEFAULT_PASS", "")), "RABBITMQ_DEFAULT_PASS must be set"
    # The password must be settable by the operator, not only a literal in the file.
    assert "${IMGQ_BROKER_PASSWORD" in env["RABBITMQ_DEFAULT_PASS"]


@pytest.mark.parametrize(
    ("name", "user", "password_variable"),
    [
        ("gateway", GATEWAY_USER, "IMGQ_GATEWAY_PASSWORD"),
        ("classifier", CLASSIFIER_USER, "IMGQ_CLASSIFIER_PASSWORD"),
    ],
)
def test_each_service_connects_as_its_own_least_privilege_user(
    name: str, user: str, password_variable: str
) -> None:
    svc_env = environment(service(name))
    setup_env = environment(service("broker-setup"))
    raw_url = svc_env.get("IMGQ_BROKER_URL")
    assert raw_url, f"{name} has no IMGQ_BROKER_URL"
    operator_env = {password_variable: "s3cret"}
    for env in ({}, operator_env):  # the defaults, and what an operator would set
        url = urlsplit(interpolate(raw_url, env))
        assert url.scheme in {"amqp", "amqps"}
        assert url.hostname == "broker", "services reach the broker by its service name"
        # The user broker-setup creates, with the password it sets, and never the admin.
        assert url.username == user
        assert url.password == interpolate(setup_env[password_variable], env)
        assert url.username != interpolate(environment(service("broker"))["RABBITMQ_DEFAULT_USER"])
    assert svc_env.get("IMGQ_DECLARE_TOPOLOGY") == "false", "services must not need configure"
    depends_on = service(name).get("depends_on") or {}
    assert (depends_on.get("broker-setup") or {}).get("condition") == (
        "service_completed_successfully"
    )


def test_broker_setup_runs_the_setup_module_as_the_operator() -> None:
    svc = service("broker-setup")
    argv = svc.get("command")
    assert argv == ["python", "-m", "compose.setup_broker"]
    assert (REPO / "compose" / "setup_broker.py").is_file()
    env = environment(svc)
    broker_env = environment(service("broker"))
    admin = urlsplit(interpolate(env["IMGQ_ADMIN_URL"]))
    assert admin.username == interpolate(broker_env["RABBITMQ_DEFAULT_USER"])
    assert admin.password == interpolate(broker_env["RABBITMQ_DEFAULT_PASS"])
    assert svc.get("restart") == "no", "a one-shot step must not be restarted"


def test_broker_keeps_its_data_in_a_named_volume() -> None:
    volumes = load_compose().get("volumes") or {}
    mounts = [str(v).split(":") for v in service("broker").get("volumes") or []]
    named = [m for m in mounts if len(m) >= 2 and m[1] == "/var/lib/rabbitmq"]
    assert named, "broker needs a volume at /var/lib/rabbitmq"
    assert named[0][0] in volumes, f"{named[0][0]!r} is not a declared named volume"


def test_gateways_scale_behind_the_load_balancer() -> None:
    svc = service("gateway")
    env = environment(svc)
    assert env.get("IMGQ_HTTP_HOST") == "0.0.0.0"
    assert not svc.get("ports"), "gateways are reached through lb, so they can scale"
    assert "container_name" not in svc
    assert (svc.get("deploy") or {}).get("replicas", 1) >= 2
    lb = service("lb")
    published = [interpolate(str(p)).rsplit(":", 1) for p in lb.get("ports") or []]
    assert any(len(p) == 2 and p[1] == "8080" for p in published), lb.get("ports")
    config = (REPO / "compose" / "nginx.conf").read_text()
    assert re.search(r"server\s+gateway:" + env.get("IMGQ_HTTP_PORT", "8080"), config)
    # Long-polls (30 s) must outlive the proxy's read timeout, and SSE must not be buffered.
    timeout = re.search(r"proxy_read_timeout\s+(\d+)s", config)
    assert timeout is not None
    assert int(timeout.group(1)) > 30
    assert "proxy_buffering off" in config


def test_gallery_is_mounted_read_only_where_the_gateway_looks() -> None:
    svc = service("gateway")
    gallery_dir = environment(svc).get("IMGQ_GALLERY_DIR")
    assert gallery_dir, "gateway needs IMGQ_GALLERY_DIR"
    for volume in svc.get("volumes") or []:
        source, target, *options = interpolate(str(volume)).split(":")
        if target == gallery_dir:
            assert (COMPOSE_FILE.parent / source).resolve() == REPO / "images"
            assert "ro" in ",".join(options).split(","), "the gallery must be read-only"
            assert (REPO / "images").is_dir()
            return
    pytest.fail(f"nothing is mounted at IMGQ_GALLERY_DIR={gallery_dir}")


def test_stop_grace_periods_outlast_the_drain() -> None:
    classifier = service("classifier").get("stop_grace_period")
    gateway = service("gateway").get("stop_grace_period")
    assert classifier is not None, "classifier needs a stop_grace_period"
    assert gateway is not None, "gateway needs a stop_grace_period"
    assert duration_seconds(classifier) > CLASSIFIER_DRAIN_SECONDS
    assert duration_seconds(gateway) > DOCKER_DEFAULT_GRACE_SECONDS


def test_gateway_offers_the_models_the_classifiers_serve() -> None:
    gateway = environment(service("gateway")).get("IMGQ_MODELS")
    classifier = environment(service("classifier")).get("IMGQ_MODELS")
    assert gateway == classifier, "IMGQ_MODELS differs between gateway and classifier"


def test_classifier_uses_one_torch_thread_per_replica() -> None:
    assert environment(service("classifier")).get("IMGQ_TORCH_THREADS") == "1"


@pytest.mark.parametrize("name", sorted(BUILT_SERVICES))
def test_service_builds_its_dockerfile_from_the_repo_root(name: str) -> None:
    build = service(name).get("build")
    assert isinstance(build, dict), f"{name} must be built"
    context = (COMPOSE_FILE.parent / build.get("context", ".")).resolve()
    assert context == REPO
    assert build.get("dockerfile") == BUILT_SERVICES[name][0]
    assert (context / build["dockerfile"]).is_file()


# --------------------------------------------------------------------------- commands


@pytest.mark.parametrize("name", sorted(BUILT_SERVICES))
def test_service_runs_an_existing_module(name: str) -> None:
    module = python_module(service_command(name))
    assert module == BUILT_SERVICES[name][1]
    assert module_source(module), f"python -m {module}: no {module}/__main__.py or {module}.py"


def test_classifier_healthcheck_module_exists() -> None:
    module = python_module(compose_healthcheck(service("classifier")))
    assert module == "classifier_service.healthcheck"
    assert module_source(module), f"python -m {module}: no such module in the repo"


def test_gateway_healthcheck_asks_for_readiness() -> None:
    argv = compose_healthcheck(service("gateway"))
    assert PurePosixPath(argv[0]).name.startswith("python"), "slim images have no curl"
    assert "/readyz" in " ".join(argv)
    assert "urllib" in " ".join(argv)


@pytest.mark.parametrize("name", sorted(BUILT_SERVICES))
def test_image_healthcheck_matches_compose(name: str) -> None:
    dockerfile = BUILT_SERVICES[name][0]
    assert dockerfile_healthcheck(dockerfile) == compose_healthcheck(service(name))


# --------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_base_and_python_env(dockerfile: str) -> None:
    froms = instructions_named(dockerfile, "FROM")
    assert froms, f"{dockerfile} has no FROM"
    assert froms[-1].split()[0] == "python:3.11-slim"
    env_text = " ".join(instructions_named(dockerfile, "ENV"))
    assert re.search(r"\bPYTHONDONTWRITEBYTECODE=1\b", env_text)
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", env_text)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_runs_as_non_root(dockerfile: str) -> None:
    instructions = parse_dockerfile(dockerfile)
    users = [(i, args) for i, (kw, args) in enumerate(instructions) if kw == "USER"]
    assert users, f"{dockerfile} never sets USER"
    last_index, last_user = users[-1]
    assert last_user.split(":")[0] not in {"root", "0"}, f"{dockerfile} runs as {last_user}"
    cmd_index = max(i for i, (kw, _) in enumerate(instructions) if kw == "CMD")
    assert last_index < cmd_index, "USER must be set before the CMD it applies to"


def test_gateway_image_never_installs_torch() -> None:
    for keyword, args in parse_dockerfile("Dockerfile.gateway"):
        assert "torch" not in args.lower(), f"Dockerfile.gateway: {keyword} {args}"
        assert "classifier" not in args.lower(), f"Dockerfile.gateway: {keyword} {args}"
    # The gateway image installs the base dependencies: they must stay torch-free too.
    base = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["dependencies"]
    assert not [dep for dep in base if dep.lower().startswith(("torch", "torchvision"))]


def test_classifier_image_installs_the_classifier_extra() -> None:
    # Through its lock file, which tests/test_lockfiles.py holds to the classifier extra.
    runs = [args for kw, args in final_stage("Dockerfile.classifier") if kw == "RUN"]
    assert any(
        re.search(r"pip install\b[^;&|]*-r\s+requirements/classifier\.lock\b", run) for run in runs
    )


def stages(dockerfile: str) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, in order (each stage starts at a FROM)."""
    found: list[list[tuple[str, str]]] = []
    for keyword, args in parse_dockerfile(dockerfile):
        if keyword == "FROM":
            found.append([])
        assert found, f"{dockerfile}: {keyword} before the first FROM"
        found[-1].append((keyword, args))
    return found


def final_stage(dockerfile: str) -> list[tuple[str, str]]:
    return stages(dockerfile)[-1]


def test_classifier_image_never_installs_torch() -> None:
    """Replicas serve exported ONNX models: only the export stage has torch."""
    for keyword, args in final_stage("Dockerfile.classifier"):
        # The package, not IMGQ_TORCH_THREADS (the thread setting's older name).
        assert not re.search(r"\btorch", args.lower()), f"Dockerfile.classifier: {keyword} {args}"
        if keyword == "RUN":
            assert "export" not in args, f"the image installs or runs the exporter: {args}"
    extras = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    assert not [dep for dep in extras["classifier"] if dep.lower().startswith("torch")]
    assert any(dep.startswith("onnxruntime") for dep in extras["classifier"])
    assert any(dep.startswith("torch==") for dep in extras["export"])


def test_classifier_image_serves_the_models_its_export_stage_wrote() -> None:
    *builders, final = stages("Dockerfile.classifier")
    # The export stage runs the exporter into a folder...
    exported_to = {}
    for stage in builders:
        name = stage[0][1].split()[-1] if " as " in stage[0][1].lower() else None
        for keyword, args in stage:
            found = re.search(r"python -m classifier_service\.export\b.*--cache[ =](\S+)", args)
            if keyword == "RUN" and found and name:
                exported_to[name] = found.group(1)
    assert exported_to, "no stage runs python -m classifier_service.export --cache DIR"
    # ...which the image copies, and where IMGQ_MODEL_CACHE points.
    copied = []
    for keyword, args in final:
        tokens = shlex.split(args)
        source_stage = next((t.split("=", 1)[1] for t in tokens if t.startswith("--from=")), None)
        paths = [t for t in tokens if not t.startswith("--")]
        if keyword == "COPY" and source_stage in exported_to:
            assert paths[0].rstrip("/") == exported_to[source_stage].rstrip("/")
            copied.append(paths[-1].rstrip("/"))
    assert copied, "the image does not copy the exported models"
    env = dict(
        token.split("=", 1)
        for args in (a for kw, a in final if kw == "ENV")
        for token in shlex.split(args)
        if "=" in token
    )
    assert env.get("IMGQ_MODEL_CACHE", "").rstrip("/") in copied


def test_classifier_index_is_an_empty_build_arg() -> None:
    args = instructions_named("Dockerfile.classifier", "ARG")
    declared = [a for a in args if a.split("=", 1)[0] == "PIP_EXTRA_INDEX_URL"]
    assert declared, "Dockerfile.classifier should declare ARG PIP_EXTRA_INDEX_URL"
    _, _, default = declared[0].partition("=")
    assert default.strip("\"'") == "", "the default must be empty"


@pytest.mark.parametrize("path", [*DOCKERFILES, "compose/compose.yaml", ".dockerignore"])
def test_no_outside_urls(path: str) -> None:
    text = interpolate((REPO / path).read_text(encoding="utf-8"))
    for url in re.findall(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+", text):
        assert urlsplit(url).hostname in ALLOWED_URL_HOSTS, f"{path} names {url}"
    assert not re.search(r"--(extra-)?index-url", text), f"{path} passes a package index to pip"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_copied_paths_exist_and_reach_the_build(dockerfile: str) -> None:
    sources = copy_sources(dockerfile)
    assert sources, f"{dockerfile} copies nothing"
    patterns = dockerignore_patterns()
    for source in sources:
        assert (REPO / source).exists(), f"{dockerfile} copies {source}, which is not in the repo"
        assert not dockerignored(source.rstrip("/"), patterns), f".dockerignore hides {source}"


@pytest.mark.parametrize("name", sorted(BUILT_SERVICES))
def test_image_gets_what_the_distribution_is_built_from(name: str) -> None:
    dockerfile, module = BUILT_SERVICES[name]
    copied = {source.rstrip("/") for source in copy_sources(dockerfile)}
    readme = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["readme"]
    assert {"pyproject.toml", readme, "shared", module, "compose"} <= copied


def test_dockerignore_keeps_the_context_small() -> None:
    patterns = dockerignore_patterns()
    for path in [".git", ".venv", "tests/artifacts", "docs", ".env", "shared/__pycache__"]:
        assert dockerignored(path, patterns), f".dockerignore should exclude {path}"
    for path in ["pyproject.toml", "README.md", "shared/settings.py", "gateway", "compose"]:
        assert not dockerignored(path, patterns), f".dockerignore must not exclude {path}"


# --------------------------------------------------------------------------- docker compose


def test_docker_compose_accepts_the_file() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker is not on PATH")
    probe = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=60, check=False
    )
    if probe.returncode != 0:
        pytest.skip("the docker CLI has no compose plugin")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
