"""Static checks of compose/compose.cluster.yaml, the three-node RabbitMQ variant.

As tests/deploy/test_deploy_files.py does for compose.yaml, and with its helpers: no Docker
engine runs here, so the file is parsed and checked against the repository (the modules its
commands run, the images' health checks, the users compose/setup_broker.py creates) and
against compose/rabbitmq-cluster.conf, which clusters the nodes.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from compose.permissions import CLASSIFIER_USER, GATEWAY_USER
from gateway.senders import Senders
from shared.topology import QueueBounds
from tests.conftest import REPO
from tests.deploy.test_deploy_files import (
    DOCKER_DEFAULT_GRACE_SECONDS,
    OPTIONAL_SECRETS,
    PASSWORD_VARIABLES,
    RABBITMQ_CONF,
    compose_healthcheck,
    dockerfile_cmd,
    dockerfile_healthcheck,
    duration_seconds,
    environment,
    interpolate,
    module_source,
    published_addresses,
    python_module,
    rabbitmq_settings,
    walk_strings,
)
from tests.docker_cli import docker_compose
from tests.service_settings import unknown_variables

CLUSTER_FILE = REPO / "compose" / "compose.cluster.yaml"
SINGLE_FILE = REPO / "compose" / "compose.yaml"
CLUSTER_CONF = REPO / "compose" / "rabbitmq-cluster.conf"
NODES = ("broker-1", "broker-2", "broker-3")
SEED = NODES[0]
BUILT = {
    "gateway": ("Dockerfile.gateway", "gateway"),
    "classifier": ("Dockerfile.classifier", "classifier_service"),
}
# What an operator exports before `up` (every secret is required in this file).
OPERATOR_ENV = {
    "IMGQ_BROKER_PASSWORD": "b0ker",
    "IMGQ_GATEWAY_PASSWORD": "g4te",
    "IMGQ_CLASSIFIER_PASSWORD": "cl4ss",
    "IMGQ_PRODUCER_PASSWORD": "pr0d",
    "IMGQ_ERLANG_COOKIE": "c00kie",
}
SECRET_VARIABLE = re.compile(r"PASSWORD|COOKIE|TOKEN")
CLASSIFIER_DRAIN_SECONDS = 20.0
ALLOWED_URL_HOSTS = {"127.0.0.1", "localhost", *NODES}


def load(path: Path = CLUSTER_FILE) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def service(name: str) -> dict[str, Any]:
    services = load()["services"]
    assert name in services, f"compose.cluster.yaml has no service {name!r}"
    svc: dict[str, Any] = services[name]
    return svc


def env_of(name: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """A service's environment as the container sees it, with the operator's variables set."""
    given = OPERATOR_ENV if env is None else env
    return {k: interpolate(v, given) for k, v in environment(service(name)).items()}


# --------------------------------------------------------------------------- the file


def test_cluster_file_defines_its_services() -> None:
    services = set(load()["services"])
    assert {*NODES, "broker-setup", "lb", "gateway", "classifier"} == services
    # Its own project, so its volumes never mix with the single node's.
    assert load()["name"] != load(SINGLE_FILE)["name"]


@pytest.mark.parametrize("name", [*NODES, "lb", "gateway", "classifier"])
def test_every_long_running_service_has_a_healthcheck(name: str) -> None:
    healthcheck = service(name).get("healthcheck")
    assert isinstance(healthcheck, dict), f"{name} has no healthcheck"
    assert not healthcheck.get("disable")
    assert compose_healthcheck(service(name))


def test_every_secret_is_required() -> None:
    # ${VAR:?}: compose refuses to start without it, rather than fall back to a known default.
    pattern = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?])?")
    secrets = set()
    for text in walk_strings(load()):
        for name, op in pattern.findall(text):
            if not SECRET_VARIABLE.search(name):
                continue
            secrets.add(name)
            if name in OPTIONAL_SECRETS:  # API tokens: unset leaves the HTTP API open
                assert op == ":-", f"${{{name}}} is optional: ${{{name}:-}}"
            else:
                assert op == ":?", f"${{{name}}} must be required (${{{name}:?...}})"
    assert secrets == set(OPERATOR_ENV) | OPTIONAL_SECRETS
    assert not re.search(r"change-?me", CLUSTER_FILE.read_text(encoding="utf-8"), re.IGNORECASE)
    # And an unset one does stop it: interpolation fails without the operator's values.
    with pytest.raises(AssertionError, match="required"):
        env_of("gateway", {})


def test_no_guest_credentials_and_no_outside_urls() -> None:
    for text in walk_strings(load()):
        resolved = interpolate(text, OPERATOR_ENV)
        assert "guest" not in resolved.lower(), text
        for url in re.findall(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\",]+", resolved):
            assert urlsplit(url).hostname in ALLOWED_URL_HOSTS, url


# --------------------------------------------------------------------------- the nodes


@pytest.mark.parametrize("node", NODES)
def test_nodes_are_named_and_keep_their_data(node: str) -> None:
    svc = service(node)
    assert svc["image"] == load(SINGLE_FILE)["services"]["broker"]["image"], "one RabbitMQ"
    assert svc["hostname"] == node
    env = environment(svc)
    assert env["RABBITMQ_NODENAME"] == f"rabbit@{node}"
    volumes = load().get("volumes") or {}
    mounts = [str(v).split(":") for v in svc["volumes"]]
    data = [m[0] for m in mounts if m[1] == "/var/lib/rabbitmq"]
    assert data == [f"{node}-data"], f"{node} needs its own named data volume"
    assert data[0] in volumes
    conf = [m for m in mounts if m[1].startswith("/etc/rabbitmq/conf.d/")]
    # The settings of every node (max_message_size) and the cluster's own, read-only.
    assert {(CLUSTER_FILE.parent / m[0]).resolve() for m in conf} == {RABBITMQ_CONF, CLUSTER_CONF}
    assert len({m[1] for m in conf}) == len(conf)
    for mount in conf:
        assert mount[1].endswith(".conf")
        assert mount[2:] == ["ro"]
    argv = compose_healthcheck(svc)
    assert argv[0] == "rabbitmq-diagnostics"


def test_nodes_share_one_erlang_cookie_and_operator_account() -> None:
    envs = [environment(service(node)) for node in NODES]
    for key in ("RABBITMQ_ERLANG_COOKIE", "RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS"):
        values = {env[key] for env in envs}
        assert len(values) == 1, f"{key} differs between the nodes"
    assert "${IMGQ_ERLANG_COOKIE:?" in envs[0]["RABBITMQ_ERLANG_COOKIE"]
    assert interpolate(envs[0]["RABBITMQ_DEFAULT_USER"]) != "guest"


def test_peer_discovery_lists_exactly_the_nodes() -> None:
    settings = rabbitmq_settings(CLUSTER_CONF)
    assert settings["cluster_formation.peer_discovery_backend"] in {
        "classic_config",
        "rabbit_peer_discovery_classic_config",
    }
    listed = [v for k, v in sorted(settings.items()) if k.startswith("cluster_formation.classic")]
    assert sorted(listed) == sorted(f"rabbit@{node}" for node in NODES)


def test_second_and_third_nodes_join_the_first() -> None:
    assert "depends_on" not in service(SEED), "the first node forms the cluster alone"
    for node in NODES[1:]:
        depends_on = service(node)["depends_on"]
        assert depends_on == {SEED: {"condition": "service_healthy"}}


# --------------------------------------------------------------------------- setup


def test_setup_declares_on_a_complete_cluster_with_three_replicas() -> None:
    svc = service("broker-setup")
    argv = [str(a) for a in svc["command"]]
    assert python_module(argv) == "compose.setup_broker"
    assert module_source("compose.setup_broker")
    assert svc["restart"] == "no"
    # Every node a member first: replicas go to the nodes that exist at declaration.
    assert svc["depends_on"] == {n: {"condition": "service_healthy"} for n in NODES}
    env = env_of("broker-setup")
    bounds = QueueBounds.from_env(env)
    assert bounds.replication.copies == len(NODES)
    assert bounds.arguments()["x-quorum-initial-group-size"] == len(NODES)
    node_env = env_of(SEED)
    admin = urlsplit(env["IMGQ_ADMIN_URL"])
    assert admin.hostname in NODES
    assert admin.username == node_env["RABBITMQ_DEFAULT_USER"]
    assert admin.password == node_env["RABBITMQ_DEFAULT_PASS"]
    management = urlsplit(env["IMGQ_MANAGEMENT_URL"])
    assert (management.username, management.password) == (admin.username, admin.password)
    # A password for every user it creates, imgq-producer's included.
    for variable in PASSWORD_VARIABLES.values():
        assert env[variable] == OPERATOR_ENV[variable]


# --------------------------------------------------------------------------- services


@pytest.mark.parametrize(
    ("name", "user", "password_variable"),
    [
        ("gateway", GATEWAY_USER, "IMGQ_GATEWAY_PASSWORD"),
        ("classifier", CLASSIFIER_USER, "IMGQ_CLASSIFIER_PASSWORD"),
    ],
)
def test_services_get_every_node_as_their_own_user(
    name: str, user: str, password_variable: str
) -> None:
    env = env_of(name)
    assert "IMGQ_BROKER_URL" not in env, "IMGQ_BROKER_URLS names every node"
    urls = [urlsplit(url) for url in env["IMGQ_BROKER_URLS"].split(",")]
    assert [url.hostname for url in urls] == list(NODES)
    setup_password = env_of("broker-setup")[password_variable]
    for url in urls:
        assert url.scheme == "amqp"
        assert url.port == 5672
        assert url.username == user
        assert url.password == setup_password == OPERATOR_ENV[password_variable]
    assert env["IMGQ_DECLARE_TOPOLOGY"] == "false"
    # The replication the service would declare agrees with what broker-setup declared.
    assert QueueBounds.from_env(env) == QueueBounds.from_env(env_of("broker-setup"))
    depends_on = service(name)["depends_on"]
    for node in NODES:
        assert depends_on[node] == {"condition": "service_healthy"}
    assert depends_on["broker-setup"] == {"condition": "service_completed_successfully"}


def test_gateway_trusts_each_event_only_from_its_senders() -> None:
    senders = Senders.from_env(env_of("gateway"))
    users = {
        name: {urlsplit(url).username for url in env_of(name)["IMGQ_BROKER_URLS"].split(",")}
        for name in BUILT
    }
    assert users == {"gateway": {GATEWAY_USER}, "classifier": {CLASSIFIER_USER}}
    assert senders.gateways == users["gateway"]
    assert senders.classifiers == users["classifier"]
    # The same as compose.yaml's.
    single = environment(load(SINGLE_FILE)["services"]["gateway"])
    for key in ("IMGQ_GATEWAY_USERS", "IMGQ_CLASSIFIER_USERS"):
        assert environment(service("gateway"))[key] == single[key]


@pytest.mark.parametrize("name", sorted(BUILT))
def test_services_run_existing_modules_and_the_images_health_checks(name: str) -> None:
    dockerfile, module = BUILT[name]
    build = service(name)["build"]
    assert (CLUSTER_FILE.parent / build["context"]).resolve() == REPO
    assert build["dockerfile"] == dockerfile
    command = service(name).get("command")
    argv = [str(a) for a in command] if command else dockerfile_cmd(dockerfile)
    assert python_module(argv) == module
    assert module_source(module), f"python -m {module}: no such module"
    assert compose_healthcheck(service(name)) == dockerfile_healthcheck(dockerfile)


def test_scaling_and_shutdown_as_in_compose_yaml() -> None:
    for name in BUILT:
        svc = service(name)
        assert "container_name" not in svc
        assert not svc.get("ports")
        assert svc["deploy"]["replicas"] >= 2
    grace = duration_seconds(service("classifier")["stop_grace_period"])
    assert grace > CLASSIFIER_DRAIN_SECONDS
    assert duration_seconds(service("gateway")["stop_grace_period"]) > DOCKER_DEFAULT_GRACE_SECONDS
    assert env_of("gateway")["IMGQ_HTTP_HOST"] == "0.0.0.0"
    assert env_of("gateway")["IMGQ_MODELS"] == env_of("classifier")["IMGQ_MODELS"]
    assert env_of("classifier")["IMGQ_INFERENCE_THREADS"] == "1"
    nginx = (REPO / "compose" / "nginx.conf").read_text(encoding="utf-8")
    assert re.search(r"server\s+gateway:" + env_of("gateway")["IMGQ_HTTP_PORT"], nginx)
    assert PurePosixPath(service("lb")["volumes"][0].split(":")[0]).name == "nginx.conf"


def test_load_balancer_and_tokens_as_in_compose_yaml() -> None:
    single = load(SINGLE_FILE)["services"]
    for key in ("image", "volumes", "ports", "healthcheck", "depends_on"):
        assert service("lb")[key] == single["lb"][key], f"lb {key} differs from compose.yaml's"
    assert "/readyz" in compose_healthcheck(service("lb"))[-1]
    tokens = environment(service("gateway"))["IMGQ_API_TOKENS"]
    assert tokens == environment(single["gateway"])["IMGQ_API_TOKENS"]
    assert interpolate(tokens, {"IMGQ_API_TOKENS": "tok1"}) == "tok1"


def test_nothing_is_published_beyond_this_machine_by_default() -> None:
    published = published_addresses(load(), OPERATOR_ENV)
    assert published
    assert set(published.values()) == {"127.0.0.1"}, published
    asked = published_addresses(load(), {**OPERATOR_ENV, "IMGQ_GATEWAY_ADDRESS": "0.0.0.0"})
    assert asked["lb:8080"] == "0.0.0.0"


def test_every_imgq_variable_is_one_a_service_reads() -> None:
    names = {key for name in load()["services"] for key in environment(service(name))}
    # broker-setup also reads its own (admin URLs, the users' passwords).
    assert not unknown_variables(names, also=("compose/setup_broker.py",)), "nothing reads these"


def test_docker_compose_accepts_the_file() -> None:
    docker = docker_compose()
    result = subprocess.run(
        [docker, "compose", "-f", str(CLUSTER_FILE), "config", "-q"],
        cwd=REPO,
        env={**os.environ, **OPERATOR_ENV},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
