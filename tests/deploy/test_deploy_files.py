"""Static checks of the container deployment files.

No Docker engine is available where the suite runs, so nothing here builds or starts a
container: the tests read compose/compose.yaml, compose/nginx.conf, compose/rabbitmq.conf, the
two Dockerfiles and .dockerignore, and check them against the repository they are meant to
package.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from compose.broker import MAX_MESSAGE_BYTES
from compose.permissions import CLASSIFIER_USER, GATEWAY_USER, GRANTS, PRODUCER_USER
from gateway.batch_store import BatchLimits
from gateway.limits import MAX_REQUEST_BYTES, MAX_UPLOAD_BYTES
from gateway.senders import Senders
from gateway.settings import GatewaySettings
from gateway.sse import KEEPALIVE_SECONDS
from shared.errors import NotReady, PayloadTooLarge
from shared.messages import JobEvent, new_job_id
from shared.states import JobStatus
from tests.conftest import REPO
from tests.docker_cli import docker_compose

COMPOSE_FILE = REPO / "compose" / "compose.yaml"
NGINX_CONF = REPO / "compose" / "nginx.conf"
RABBITMQ_CONF = REPO / "compose" / "rabbitmq.conf"
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

# What an operator exports before `up`: the file has no default for any password.
OPERATOR_ENV = {
    "IMGQ_BROKER_PASSWORD": "b0ker",
    "IMGQ_GATEWAY_PASSWORD": "g4te",
    "IMGQ_CLASSIFIER_PASSWORD": "cl4ss",
    "IMGQ_PRODUCER_PASSWORD": "pr0d",
}
# The variable that carries each broker user's password to broker-setup.
PASSWORD_VARIABLES = {
    user: f"IMGQ_{user.removeprefix('imgq-').upper()}_PASSWORD" for user in GRANTS
}
# ${NAME...} references to a secret; the API tokens are one, but optional (unset = open API).
SECRET_REFERENCE = re.compile(
    r"\$\{([A-Za-z_][A-Za-z0-9_]*(?:PASSWORD|COOKIE|TOKEN)[A-Z0-9_]*)(:?[-?])?"
)
OPTIONAL_SECRETS = {"IMGQ_API_TOKENS"}


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


@dataclass(frozen=True, slots=True)
class Directive:
    """One nginx directive: its name, its arguments, and its block if it has one."""

    name: str
    args: tuple[str, ...]
    block: tuple[Directive, ...] | None = None

    def all(self, name: str) -> list[Directive]:
        return [d for d in self.block or () if d.name == name]

    def one(self, name: str) -> Directive:
        found = self.all(name)
        assert len(found) == 1, f"{self.name} {' '.join(self.args)}: {len(found)} {name}"
        return found[0]


_NGINX_TOKEN = re.compile(
    r"""#[^\n]*|'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)"|([{};])|([^\s{};'"#]+)"""
)


def _nginx_unquote(text: str) -> str:
    # As nginx reads a quoted string: \n, \r and \t are control characters, \x is x.
    controls = {"n": "\n", "r": "\r", "t": "\t"}
    return re.sub(r"\\(.)", lambda m: controls.get(m.group(1), m.group(1)), text)


def parse_nginx(text: str) -> Directive:
    """nginx.conf as a tree, lightly: enough to read directives and their values, not to
    check what nginx would accept (variables are left as they are)."""
    stack: list[tuple[str, tuple[str, ...], list[Directive]]] = [("", (), [])]
    words: list[str] = []
    for match in _NGINX_TOKEN.finditer(text):
        single, double, punctuation, bare = match.groups()
        if single is None and double is None and punctuation is None and bare is None:
            continue  # a comment
        if punctuation == ";":
            assert words, "an empty statement"
            stack[-1][2].append(Directive(words[0], tuple(words[1:])))
            words = []
        elif punctuation == "{":
            assert words, "a block without a name"
            stack.append((words[0], tuple(words[1:]), []))
            words = []
        elif punctuation == "}":
            assert not words, f"{words} is missing its ';'"
            name, args, children = stack.pop()
            assert stack, "one '}' too many"
            stack[-1][2].append(Directive(name, args, tuple(children)))
        else:
            words.append(bare if bare is not None else _nginx_unquote(single or double or ""))
    assert len(stack) == 1, "nginx.conf ends inside a block"
    assert not words, "nginx.conf ends inside a statement"
    return Directive("", (), tuple(stack[0][2]))


def nginx_server() -> tuple[Directive, Directive]:
    http = parse_nginx(NGINX_CONF.read_text(encoding="utf-8")).one("http")
    return http, http.one("server")


def nginx_location(server: Directive, path: str) -> Directive:
    """The location nginx picks for a request path: exact, else the first regex that matches,
    else the longest prefix (no ^~ or nested locations here)."""
    locations = server.all("location")
    for location in locations:
        if location.args[0] == "=" and location.args[1] == path:
            return location
    for location in locations:
        if location.args[0] in {"~", "~*"}:
            flags = re.IGNORECASE if location.args[0] == "~*" else 0
            if re.search(location.args[1], path, flags):
                return location
    prefixes = [loc for loc in locations if len(loc.args) == 1 and path.startswith(loc.args[0])]
    assert prefixes, f"no location serves {path}"
    return max(prefixes, key=lambda loc: len(loc.args[0]))


def nginx_setting(name: str, *levels: Directive) -> tuple[str, ...]:
    """A directive's arguments where it takes effect: the innermost level that sets it."""
    for level in levels:
        found = level.all(name)
        if found:
            return found[-1].args
    raise AssertionError(f"{name} is not set")


def nginx_bytes(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kKmMgG]?)", value).groups()  # type: ignore[union-attr]
    return int(number) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit.lower()]


def nginx_seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h)?", value).groups()  # type: ignore[union-attr]
    return int(number) * {"ms": 1e-3, "s": 1.0, None: 1.0, "m": 60.0, "h": 3600.0}[unit]


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
        resolved = interpolate(text, OPERATOR_ENV)
        assert "guest" not in resolved.lower(), f"guest credentials in {text!r}"
    for dockerfile in DOCKERFILES:
        for keyword, args in parse_dockerfile(dockerfile):
            assert "guest" not in args.lower(), f"{dockerfile}: {keyword} {args}"


def test_broker_has_its_own_user() -> None:
    env = environment(service("broker"))
    user = interpolate(env.get("RABBITMQ_DEFAULT_USER", ""))
    assert user, "RABBITMQ_DEFAULT_USER must be set"
    assert user != "guest"
    assert interpolate(env.get("RABBITMQ_DEFAULT_PASS", ""), OPERATOR_ENV)
    # The operator's own password, required: never a literal or a default in the file.
    assert env["RABBITMQ_DEFAULT_PASS"].startswith("${IMGQ_BROKER_PASSWORD:?")


def test_no_default_passwords() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert not re.search(r"change-?me", text, re.IGNORECASE), "a placeholder password is left"
    found = set()
    for value in walk_strings(load_compose()):
        for name, op in SECRET_REFERENCE.findall(value):
            found.add(name)
            if name in OPTIONAL_SECRETS:
                assert op == ":-", f"${{{name}}} is optional: ${{{name}:-}}"
            else:
                # ${VAR:?}: compose refuses to start without it instead of using a default.
                assert op == ":?", f"${{{name}}} must be required (${{{name}:?...}})"
    assert found == set(OPERATOR_ENV) | OPTIONAL_SECRETS
    # And an unset one does stop it.
    with pytest.raises(AssertionError, match="required"):
        interpolate(environment(service("gateway"))["IMGQ_BROKER_URL"], {})


def test_setup_gets_a_password_for_every_broker_user() -> None:
    env = environment(service("broker-setup"))
    setup_source = (REPO / "compose" / "setup_broker.py").read_text(encoding="utf-8")
    for user, variable in PASSWORD_VARIABLES.items():
        assert env.get(variable, "").startswith(f"${{{variable}:?"), (
            f"broker-setup creates {user} and needs {variable}, required"
        )
        # compose/setup_broker.py reads it under that name.
        assert f'"{variable}"' in setup_source
    assert PASSWORD_VARIABLES[PRODUCER_USER] == "IMGQ_PRODUCER_PASSWORD"
    # Only broker-setup learns the producer's password: no service connects as imgq-producer.
    for name, svc in load_compose()["services"].items():
        if name != "broker-setup":
            assert "IMGQ_PRODUCER_PASSWORD" not in " ".join(walk_strings(svc)), name


def test_api_tokens_are_set_from_the_environment() -> None:
    # Tokens without editing the file; unset, the API stays open (the local demo).
    raw = environment(service("gateway"))["IMGQ_API_TOKENS"]
    assert interpolate(raw, {}) == ""
    assert interpolate(raw, {"IMGQ_API_TOKENS": "tok1,tok2"}) == "tok1,tok2"
    assert GatewaySettings.from_env({"IMGQ_API_TOKENS": interpolate(raw, {})}).api_tokens == ()


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
    url = urlsplit(interpolate(raw_url, OPERATOR_ENV))
    assert url.scheme in {"amqp", "amqps"}
    assert url.hostname == "broker", "services reach the broker by its service name"
    # The user broker-setup creates, with the password it sets, and never the admin.
    assert url.username == user
    assert password_variable == PASSWORD_VARIABLES[user]
    assert url.password == interpolate(setup_env[password_variable], OPERATOR_ENV)
    assert url.password == OPERATOR_ENV[password_variable]
    assert url.username != interpolate(environment(service("broker"))["RABBITMQ_DEFAULT_USER"])
    assert svc_env.get("IMGQ_DECLARE_TOPOLOGY") == "false", "services must not need configure"
    depends_on = service(name).get("depends_on") or {}
    assert (depends_on.get("broker-setup") or {}).get("condition") == (
        "service_completed_successfully"
    )


def test_gateway_trusts_each_event_only_from_its_senders() -> None:
    env = {k: interpolate(v, OPERATOR_ENV) for k, v in environment(service("gateway")).items()}
    senders = Senders.from_env(env)
    # The users the services connect as, which broker-setup creates.
    gateway_user = urlsplit(env["IMGQ_BROKER_URL"]).username
    classifier_user = urlsplit(
        interpolate(environment(service("classifier"))["IMGQ_BROKER_URL"], OPERATOR_ENV)
    ).username
    assert (gateway_user, classifier_user) == (GATEWAY_USER, CLASSIFIER_USER)
    assert senders.gateways == {GATEWAY_USER}
    assert senders.classifiers == {CLASSIFIER_USER}
    queued = JobEvent(new_job_id(), JobStatus.QUEUED, "efficientnet_lite0", "cat.jpg")
    assert senders.refuses(queued, CLASSIFIER_USER) is not None
    assert senders.refuses(queued, PRODUCER_USER) is not None
    assert senders.refuses(queued.advance(JobStatus.SUCCEEDED), GATEWAY_USER) is not None
    assert senders.refuses(queued.advance(JobStatus.SUCCEEDED), CLASSIFIER_USER) is None


def test_broker_setup_runs_the_setup_module_as_the_operator() -> None:
    svc = service("broker-setup")
    argv = svc.get("command")
    assert argv == ["python", "-m", "compose.setup_broker"]
    assert (REPO / "compose" / "setup_broker.py").is_file()
    env = environment(svc)
    broker_env = environment(service("broker"))
    admin = urlsplit(interpolate(env["IMGQ_ADMIN_URL"], OPERATOR_ENV))
    assert admin.username == interpolate(broker_env["RABBITMQ_DEFAULT_USER"])
    assert admin.password == interpolate(broker_env["RABBITMQ_DEFAULT_PASS"], OPERATOR_ENV)
    management = urlsplit(interpolate(env["IMGQ_MANAGEMENT_URL"], OPERATOR_ENV))
    assert (management.username, management.password) == (admin.username, admin.password)
    assert svc.get("restart") == "no", "a one-shot step must not be restarted"


def test_broker_keeps_its_data_in_a_named_volume() -> None:
    volumes = load_compose().get("volumes") or {}
    mounts = [str(v).split(":") for v in service("broker").get("volumes") or []]
    named = [m for m in mounts if len(m) >= 2 and m[1] == "/var/lib/rabbitmq"]
    assert named, "broker needs a volume at /var/lib/rabbitmq"
    assert named[0][0] in volumes, f"{named[0][0]!r} is not a declared named volume"


def published_addresses(compose: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """Each published port ("service:host_port") and the host address it is bound to, as
    compose would publish it with ``env`` set ("" = every address of the machine)."""
    published = {}
    for name, svc in compose["services"].items():
        for port in svc.get("ports") or []:
            assert isinstance(port, str), f"{name}: use the short syntax, which these tests read"
            parts = interpolate(port, env).split(":")
            assert len(parts) in (2, 3), f"{name}: {port} publishes a port on no host port"
            address = parts[0] if len(parts) == 3 else ""
            published[f"{name}:{parts[-2]}"] = address
    return published


def test_nothing_is_published_beyond_this_machine_by_default() -> None:
    # Without tokens the API lets anyone who reaches it submit, read and delete jobs, and the
    # management UI is the operator's: both stay on loopback unless the operator says otherwise.
    published = published_addresses(load_compose(), OPERATOR_ENV)
    assert published, "the load balancer and the management UI publish ports"
    assert set(published.values()) == {"127.0.0.1"}, published
    with_tokens = {**OPERATOR_ENV, "IMGQ_API_TOKENS": "tok1"}
    assert set(published_addresses(load_compose(), with_tokens).values()) == {"127.0.0.1"}


def test_the_api_is_published_beyond_this_machine_only_when_asked() -> None:
    env = {**OPERATOR_ENV, "IMGQ_API_TOKENS": "tok1", "IMGQ_GATEWAY_ADDRESS": "0.0.0.0"}
    published = published_addresses(load_compose(), env)
    assert published["lb:8080"] == "0.0.0.0"
    # Only the API: the management UI stays on loopback whatever IMGQ_GATEWAY_ADDRESS says.
    others = {key: address for key, address in published.items() if key != "lb:8080"}
    assert others, "the management UI is published too"
    assert set(others.values()) == {"127.0.0.1"}


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
    http, server = nginx_server()
    assert server.one("listen").args == ("8080",)
    upstream = http.one("upstream")
    # Every gateway container under the one service name, found again as they scale.
    (gateway,) = upstream.all("server")
    assert gateway.args[0] == "gateway:" + env.get("IMGQ_HTTP_PORT", "8080")
    assert "resolve" in gateway.args[1:]
    assert http.all("resolver"), "resolve needs a resolver (Docker's DNS)"
    for location in server.all("location"):
        if location.all("proxy_pass"):
            assert location.one("proxy_pass").args == (f"http://{upstream.args[0]}",)


# --------------------------------------------------------------------------- nginx.conf

# Request paths of the API, as the gateway routes them (gateway/app.py).
JOB_PATH = "/classifications/" + "0" * 32
EVENTS_PATH = JOB_PATH + "/events"
SUBMIT_PATH = "/classifications"
BATCH_PATH = "/batches"


def proxied_locations() -> list[tuple[str, Directive]]:
    _, server = nginx_server()
    paths = [
        "/",
        "/info",
        "/readyz",
        SUBMIT_PATH,
        BATCH_PATH,
        JOB_PATH,
        EVENTS_PATH,
        "/images/coffee.jpg",
    ]
    return [(path, nginx_location(server, path)) for path in paths]


def test_nginx_round_robin_with_passive_health_checks() -> None:
    http, server = nginx_server()
    upstream = http.one("upstream")
    # Round robin: no other balancing method (any gateway answers for any job).
    methods = {"hash", "ip_hash", "least_conn", "least_time", "random", "sticky"}
    assert not [d.name for d in upstream.block or () if d.name in methods]
    # nginx open source checks passively only: failures (errors, timeouts, the 503 of a gateway
    # that is not ready) take a gateway out for a while.
    options = dict(arg.split("=", 1) for arg in upstream.one("server").args[1:] if "=" in arg)
    assert int(options["max_fails"]) >= 1
    assert nginx_seconds(options["fail_timeout"]) > 0
    for path in ("/readyz", JOB_PATH, EVENTS_PATH):
        retried = nginx_setting("proxy_next_upstream", nginx_location(server, path), server, http)
        assert {"error", "timeout", "http_503"} <= set(retried), path
    # A submission's 503 is the queue being full: the client's to see, not the gateway's fault.
    submit = nginx_setting("proxy_next_upstream", nginx_location(server, SUBMIT_PATH), server)
    assert "http_503" not in submit
    assert "non_idempotent" not in submit, "a POST must never be sent twice"


def test_nginx_keeps_connections_to_the_gateways_alive() -> None:
    http, server = nginx_server()
    upstream = http.one("upstream")
    assert int(upstream.one("keepalive").args[0]) > 0
    # Idle connections closed before aiohttp's own keep-alive (75 s) closes them.
    assert nginx_seconds(upstream.one("keepalive_timeout").args[0]) < 75
    for path, location in proxied_locations():
        assert nginx_setting("proxy_http_version", location, server) == ("1.1",), path
        # Like nginx: a level that sets any proxy_set_header inherits none from above.
        headers = [d.args for d in location.all("proxy_set_header")] or [
            d.args for d in server.all("proxy_set_header")
        ]
        assert ("Connection", "") in headers, f"{path}: upstream keep-alive needs Connection ''"


def test_nginx_timeouts_outlast_long_polls_and_event_streams() -> None:
    _, server = nginx_server()
    max_wait = GatewaySettings.from_env({}).max_wait  # compose leaves IMGQ_MAX_WAIT unset
    for path, location in proxied_locations():
        read = nginx_seconds(nginx_setting("proxy_read_timeout", location, server)[0])
        assert read > max_wait + 5, f"{path}: a ?wait={max_wait:g} long-poll would be cut"
        assert read > 2 * KEEPALIVE_SECONDS, f"{path}: an idle event stream would be cut"


def test_nginx_streams_server_sent_events() -> None:
    _, server = nginx_server()
    location = nginx_location(server, EVENTS_PATH)
    assert nginx_setting("proxy_buffering", location, server) == ("off",)


def test_nginx_body_limit_is_the_gateways() -> None:
    http, server = nginx_server()
    limit = nginx_bytes(nginx_setting("client_max_body_size", server, http)[0])
    assert limit == MAX_REQUEST_BYTES, "nginx.conf and gateway/limits.py disagree"
    # Uploads stream through: nginx would spool every buffered body over 16 KiB to disk.
    submit = nginx_location(server, SUBMIT_PATH)
    assert nginx_setting("proxy_request_buffering", submit, server) == ("off",)


def test_nginx_limits_each_client_address() -> None:
    http, server = nginx_server()
    zones = {}
    for directive in http.all("limit_req_zone"):
        key, *options = directive.args
        assert key == "$binary_remote_addr", "requests are limited per client address"
        settings = dict(option.split("=", 1) for option in options)
        zones[settings["zone"].split(":")[0]] = settings
        assert re.fullmatch(r"\d+r/[sm]", settings["rate"])
    connection_zones = {}
    for directive in http.all("limit_conn_zone"):
        key, option = directive.args
        assert key == "$binary_remote_addr", "connections are limited per client address"
        connection_zones[option.split("=", 1)[1].split(":")[0]] = option
    assert nginx_setting("limit_req_status", server, http) == ("429",)
    assert nginx_setting("limit_conn_status", server, http) == ("429",)
    for path, location in proxied_locations():
        zone, *options = nginx_setting("limit_req", location, server)
        assert zone.removeprefix("zone=") in zones, path
        burst = dict(o.split("=", 1) for o in options if "=" in o).get("burst", "0")
        assert int(burst) > 0, f"{path}: bursts (a page load) must be allowed"
        name, count = nginx_setting("limit_conn", location, server)
        assert name in connection_zones, path
        assert int(count) >= 6, f"{path}: a browser alone opens 6 connections"


def test_nginx_batch_body_limit_is_the_gateways() -> None:
    http, server = nginx_server()
    batches = nginx_location(server, BATCH_PATH)
    assert batches.args == ("=", BATCH_PATH), "batches need a location of their own"
    limit = nginx_bytes(nginx_setting("client_max_body_size", batches, server, http)[0])
    gateway_env = {
        k: interpolate(v, OPERATOR_ENV) for k, v in environment(service("gateway")).items()
    }
    assert limit == BatchLimits.from_env(gateway_env).max_bytes == 64 * 1024 * 1024
    # Streamed through, never spooled to disk, and never sent to a second gateway once sent.
    assert nginx_setting("proxy_request_buffering", batches, server) == ("off",)
    retried = nginx_setting("proxy_next_upstream", batches, server)
    assert "http_503" not in retried
    assert "non_idempotent" not in retried
    # Everywhere else stays at one upload's limit.
    for path in (SUBMIT_PATH, "/", JOB_PATH):
        location = nginx_location(server, path)
        assert nginx_bytes(nginx_setting("client_max_body_size", location, server, http)[0]) == (
            MAX_REQUEST_BYTES
        ), path


def _error_pages(level: Directive) -> dict[str, str]:
    return {code: d.args[-1] for d in level.all("error_page") for code in d.args[:-1]}


def test_nginx_refusals_are_problem_details() -> None:
    _, server = nginx_server()
    # nginx inherits error_page only into a level that sets none: check each level that does.
    for level in [server, *(loc for loc in server.all("location") if loc.all("error_page"))]:
        _check_refusals(server, _error_pages(level))
    # A batch refused by nginx says so, not that one upload was too large.
    batch_page = _error_pages(nginx_location(server, BATCH_PATH))["413"].removeprefix("=")
    (named,) = [loc for loc in server.all("location") if loc.args == (batch_page,)]
    assert "batch" in json.loads(named.one("return").args[1])["detail"]


def _check_refusals(server: Directive, pages: dict[str, str]) -> None:
    # The codes the gateway gives the same refusals (shared/errors.py).
    expected_codes = {"413": PayloadTooLarge.code, "429": "too_many_requests", "502": NotReady.code}
    for status, code in expected_codes.items():
        target = pages[status].removeprefix("=")
        (named,) = [loc for loc in server.all("location") if loc.args == (target,)]
        assert nginx_setting("default_type", named) == ("application/problem+json",)
        assert named.one("types").block == (), "the path's extension must not pick the type"
        returned_status, body = named.one("return").args
        problem = json.loads(body)
        assert problem["code"] == code
        assert problem["type"] == f"urn:imgq:problem:{code}"
        assert problem["status"] == int(returned_status)
        if int(returned_status) in (429, 503):
            headers = [d.args[0] for d in named.all("add_header")]
            assert "Retry-After" in headers, f"{status}: a client needs to know when to retry"


# --------------------------------------------------------------------------- RabbitMQ


def rabbitmq_settings(path: Path = RABBITMQ_CONF) -> dict[str, str]:
    settings = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def test_broker_refuses_messages_over_16_mib() -> None:
    limit = int(rabbitmq_settings()["max_message_size"])
    assert limit == 16 * 1024 * 1024
    # The same bound as the local private node the tests run on.
    assert limit == MAX_MESSAGE_BYTES
    # Room for the largest upload, even base64-encoded in a version 1 request, and headers.
    assert limit > MAX_UPLOAD_BYTES * 4 // 3
    mounts = [str(v).split(":") for v in service("broker").get("volumes") or []]
    conf = [m for m in mounts if m[1].startswith("/etc/rabbitmq/conf.d/")]
    assert [(COMPOSE_FILE.parent / m[0]).resolve() for m in conf] == [RABBITMQ_CONF]
    assert conf[0][1].endswith(".conf")
    assert conf[0][2:] == ["ro"]


# The oldest RabbitMQ release line the files may run: 4.4 is the one RabbitMQ supports as of
# December 2026 (only the newest minor series gets fixes), and no 4.x before 4.3.1 lets a
# least-privilege service look the topology up (passive declarations needed configure).
SUPPORTED_RABBITMQ_LINE = (4, 4)


def test_broker_runs_a_supported_release_line() -> None:
    image = service("broker")["image"]
    name, _, tag = image.partition(":")
    assert name == "rabbitmq"
    # A release line (major.minor), so patch releases come with each pull, never "latest".
    match = re.fullmatch(r"(\d+)\.(\d+)-management", tag)
    assert match, f"{image}: pin a release line, <major>.<minor>-management"
    line = (int(match.group(1)), int(match.group(2)))
    assert line >= SUPPORTED_RABBITMQ_LINE, f"{image} is older than the supported line"
    # The Kubernetes notes say what running it, while the suite runs 3.10, means.
    notes = (REPO / "k8s" / "README.md").read_text(encoding="utf-8")
    assert f"rabbitmq:{tag}" in notes


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
    assert environment(service("classifier")).get("IMGQ_INFERENCE_THREADS") == "1"


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


def test_classifier_healthcheck_asks_for_readiness() -> None:
    # Compose restarts nothing on a health check: it orders start-up and answers `up --wait`,
    # so, as the gateway's, the check is readiness (connected and consuming), and a broker
    # outage marks the replicas unhealthy without restarting any.
    argv = compose_healthcheck(service("classifier"))
    module = python_module(argv)
    assert module == "classifier_service.healthcheck"
    assert module_source(module), f"python -m {module}: no such module in the repo"
    assert argv[argv.index(module) + 1 :] == ["--ready"]


def test_load_balancer_healthcheck_reaches_a_ready_gateway() -> None:
    # Through nginx to a gateway's /readyz (a not-ready one answers 503, retried on the next):
    # `up --wait` returns once a request can reach a gateway that can queue jobs.
    argv = compose_healthcheck(service("lb"))
    assert argv[0] == "wget"
    assert urlsplit(argv[-1]).path == "/readyz"
    assert urlsplit(argv[-1]).port == 8080


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
    # Through its lock file, which tests/deploy/test_lockfiles.py holds to the classifier extra.
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
    if path.endswith(".yaml"):  # the values compose sees: comments are never interpolated
        text = "\n".join(interpolate(s, OPERATOR_ENV) for s in walk_strings(load_compose()))
    else:
        text = (REPO / path).read_text(encoding="utf-8")
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
    docker = docker_compose()
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
