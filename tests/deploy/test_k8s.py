"""Static checks of the Kubernetes manifests in k8s/.

No cluster, kubectl or operator exists where the suite runs. Each overlay is rendered the way
kustomize renders kustomizations that only list resources (k8s/README.md says why they do
nothing else), every core object is validated against the Kubernetes API schemas that
kubernetes-validate ships, the operators' custom resources are checked against the fields their
CRDs define, and the objects are checked against each other and against what they deploy: the
topology shared/topology.py declares, the grants of compose/permissions.py, the variables the
services read, the Dockerfiles' users, health checks and model folder.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from compose.broker import MAX_MESSAGE_BYTES
from compose.permissions import CLASSIFIER_USER, GATEWAY_USER, GRANTS, PRODUCER_USER
from gateway.senders import Senders
from shared.catalog import catalog_models
from shared.messages import JobEvent, new_job_id
from shared.states import JobStatus
from shared.topology import (
    CANCELLATIONS,
    CANCELLATIONS_ARGUMENTS,
    DEAD_LETTER_ARGUMENTS,
    DEAD_LETTER_NOTICES,
    DEAD_LETTER_QUEUE,
    EVENT_LOG,
    MODEL_ROUTER,
    REPLIES_EXCHANGE,
    REQUEST_ROUTING_KEY,
    REQUESTS_EXCHANGE,
    REQUESTS_QUEUE,
    UNROUTED_EXCHANGE,
    LogRetention,
    QueueBounds,
    Replication,
    WebhookRetries,
    declare_event_log,
    declare_model_queue,
    declare_topology,
    declare_webhooks,
    model_binding,
    model_queue,
)
from tests.conftest import REPO
from tests.deploy.test_deploy_files import (
    dockerfile_healthcheck,
    instructions_named,
    module_source,
    parse_dockerfile,
    python_module,
    rabbitmq_settings,
)
from tests.service_settings import unknown_variables

K8S = REPO / "k8s"
OVERLAYS = {
    "base": K8S / "base",
    "keda": K8S / "overlays" / "keda",
    "hpa": K8S / "overlays" / "hpa",
}
SECRETS_EXAMPLE = K8S / "secrets.example.yaml"
NAMESPACE = "imgq"
CLUSTER = "imgq-broker"
GATEWAY = "imgq-gateway"
CLASSIFIER = "imgq-classifier"

# The oldest Kubernetes the manifests are meant for (nothing in them is newer: autoscaling/v2
# and policy/v1 are older) and the newest whose schemas kubernetes-validate 1.37 ships.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")

# KEDA's user (overlays/keda) only reads queue lengths from the management API.
KEDA_USER = "imgq-keda"
NOTHING = "^$"

# Fields of the custom resources' specs, from the operators' CRD types (rabbitmq.com/v1beta1
# of the Cluster Operator and the Messaging Topology Operator, keda.sh/v1alpha1 of KEDA 2.x),
# and which of them the operators require.
CLUSTER_REFERENCE = "rabbitmqClusterReference"


@dataclass(frozen=True)
class CustomKind:
    api_version: str
    fields: frozenset[str]
    required: frozenset[str]


CUSTOM_KINDS = {
    "RabbitmqCluster": CustomKind(
        "rabbitmq.com/v1beta1",
        frozenset(
            [
                "replicas",
                "image",
                "imagePullSecrets",
                "service",
                "persistence",
                "resources",
                "affinity",
                "tolerations",
                "rabbitmq",
                "tls",
                "override",
                "skipPostDeploySteps",
                "terminationGracePeriodSeconds",
                "delayStartSeconds",
                "secretBackend",
            ]
        ),
        frozenset({"replicas"}),
    ),
    "User": CustomKind(
        "rabbitmq.com/v1beta1",
        frozenset({"tags", CLUSTER_REFERENCE, "importCredentialsSecret"}),
        frozenset({CLUSTER_REFERENCE}),
    ),
    "Permission": CustomKind(
        "rabbitmq.com/v1beta1",
        frozenset({"user", "userReference", "vhost", "permissions", CLUSTER_REFERENCE}),
        frozenset({"vhost", "permissions", CLUSTER_REFERENCE}),
    ),
    "Exchange": CustomKind(
        "rabbitmq.com/v1beta1",
        frozenset(
            {"name", "vhost", "type", "durable", "autoDelete", "arguments", CLUSTER_REFERENCE}
        ),
        frozenset({"name", CLUSTER_REFERENCE}),
    ),
    "Queue": CustomKind(
        "rabbitmq.com/v1beta1",
        frozenset(
            {"name", "vhost", "type", "durable", "autoDelete", "deleteIfEmpty", "deleteIfUnused"}
            | {"arguments", CLUSTER_REFERENCE}
        ),
        frozenset({"name", CLUSTER_REFERENCE}),
    ),
    "Binding": CustomKind(
        "rabbitmq.com/v1beta1",
        frozenset(
            {"vhost", "source", "destination", "destinationType", "routingKey", "arguments"}
            | {CLUSTER_REFERENCE}
        ),
        frozenset({CLUSTER_REFERENCE}),
    ),
    "ScaledObject": CustomKind(
        "keda.sh/v1alpha1",
        frozenset(
            [
                "scaleTargetRef",
                "pollingInterval",
                "cooldownPeriod",
                "initialCooldownPeriod",
                "idleReplicaCount",
                "minReplicaCount",
                "maxReplicaCount",
                "fallback",
                "advanced",
                "triggers",
            ]
        ),
        frozenset({"scaleTargetRef", "triggers"}),
    ),
    "TriggerAuthentication": CustomKind(
        "keda.sh/v1alpha1",
        frozenset(
            [
                "secretTargetRef",
                "env",
                "configMapTargetRef",
                "podIdentity",
                "hashiCorpVault",
                "azureKeyVault",
                "awsSecretManager",
                "gcpSecretManager",
                "boundServiceAccountToken",
            ]
        ),
        frozenset(),
    ),
}
CUSTOM_GROUPS = {kind.api_version.split("/")[0] for kind in CUSTOM_KINDS.values()}

# What the RabbitMQ Cluster Operator creates for the cluster and names after it.
PER_POD_HOST = "{cluster}-server-{index}.{cluster}-nodes.{namespace}.svc"
CLIENT_SERVICE_HOST = "{cluster}.{namespace}.svc"
AMQP_PORT = 5672
MANAGEMENT_PORT = 15672
# RabbitMQ's HTTP health check that current Cluster Operators probe start-up with.
HTTP_STARTUP_PROBE_SINCE = (4, 2, 4)
LEGACY_STARTUP_PROBE = "rabbitmq.com/legacy-startup-probe"

# Before liveness checks begin, a gateway gets this long to start answering /healthz.
GATEWAY_STARTUP_BUDGET_SECONDS = 60
# The classifier's health check: `--live` (the process: its loop runs, it is not stalled)
# restarts a pod, `--ready` (the broker: connected and consuming) only takes it out of service.
HEALTHCHECK_MODULE = "classifier_service.healthcheck"
LIVE = ["python", "-m", HEALTHCHECK_MODULE, "--live"]
READY = ["python", "-m", HEALTHCHECK_MODULE, "--ready"]
# The classifier drains in-flight work for IMGQ_DRAIN_TIMEOUT after SIGTERM (default below).
CLASSIFIER_DRAIN_DEFAULT_SECONDS = 20.0

Obj = dict[str, Any]


# --------------------------------------------------------------------------- rendering


def load_documents(path: Path) -> list[Obj]:
    documents = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    for doc in documents:
        assert isinstance(doc, dict), f"{path}: every document must be a mapping"
    return documents


def _walk(directory: Path) -> Iterator[tuple[Path, Obj]]:
    """(file, object) for every object a resources-only kustomization lists, recursively."""
    path = directory / "kustomization.yaml"
    assert path.is_file(), f"{directory} has no kustomization.yaml"
    (kustomization,) = load_documents(path)
    assert kustomization.get("apiVersion") == "kustomize.config.k8s.io/v1beta1", path
    assert kustomization.get("kind") == "Kustomization", path
    # Anything but resources (namespace, images, patches, generators, ...) would make what is
    # applied differ from the files, and this renderer wrong.
    extra = sorted(set(kustomization) - {"apiVersion", "kind", "resources"})
    assert not extra, f"{path}: {extra} change what is applied; k8s/ only lists resources"
    resources = kustomization.get("resources")
    assert isinstance(resources, list), f"{path}: resources must be a list"
    assert resources, f"{path} lists no resources"
    for entry in resources:
        target = (directory / entry).resolve()
        assert target.is_relative_to(K8S), f"{path}: {entry} is outside k8s/"
        assert target.exists(), f"{path}: {entry} does not exist"
        if target.is_dir():
            yield from _walk(target)
        else:
            for doc in load_documents(target):
                yield target, doc


@cache
def _rendered(name: str) -> tuple[tuple[Path, Obj], ...]:
    return tuple(_walk(OVERLAYS[name]))


def render(name: str) -> list[Obj]:
    return [obj for _, obj in _rendered(name)]


def identity(obj: Obj) -> tuple[str, str, str, str]:
    group = obj["apiVersion"].rpartition("/")[0]
    meta = obj.get("metadata") or {}
    return group, obj["kind"], meta.get("namespace", ""), meta.get("name", "")


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [obj for obj in objects if obj.get("kind") == kind]


def named(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [obj for obj in of_kind(objects, kind) if obj["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Obj) -> list[Obj]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def main_container(objects: list[Obj], deployment: str) -> Obj:
    (container, *rest) = pod_spec(named(objects, "Deployment", deployment))["containers"]
    assert not rest, f"{deployment} should run one container"
    return container


def literal_env(container: Obj) -> dict[str, str]:
    """The container's plain `value` variables (not those from Secrets or fields)."""
    return {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}


def example_secrets() -> dict[str, dict[str, str]]:
    secrets = {}
    for doc in load_documents(SECRETS_EXAMPLE):
        assert doc["kind"] == "Secret", f"{SECRETS_EXAMPLE} holds only Secrets"
        assert doc["metadata"].get("namespace") == NAMESPACE
        assert "data" not in doc, "use stringData: the example must be readable"
        secrets[doc["metadata"]["name"]] = {k: str(v) for k, v in doc["stringData"].items()}
    return secrets


def broker_replicas(objects: list[Obj]) -> int:
    replicas = named(objects, "RabbitmqCluster", CLUSTER)["spec"]["replicas"]
    assert isinstance(replicas, int)
    return replicas


def cpu_cores(quantity: str | int | float) -> Decimal:
    text = str(quantity)
    return Decimal(text[:-1]) / 1000 if text.endswith("m") else Decimal(text)


def version_of(image: str) -> tuple[int, ...]:
    tag = image.rpartition(":")[2]
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", tag)
    assert match, f"{image}: pin a RabbitMQ version in the tag"
    return tuple(int(part) for part in match.groups() if part is not None)


ALL = sorted(OVERLAYS)


# --------------------------------------------------------------------------- structure


def test_every_kustomization_only_lists_resources() -> None:
    kustomizations = sorted(K8S.rglob("kustomization.yaml"))
    assert len(kustomizations) >= len(OVERLAYS)
    for path in kustomizations:
        list(_walk(path.parent))  # asserts as it goes


def test_every_manifest_file_is_applied_by_some_overlay() -> None:
    applied = {path for name in OVERLAYS for path, _ in _rendered(name)}
    manifests = {p for p in K8S.rglob("*.y*ml") if p.name != "kustomization.yaml"}
    stray = sorted(str(p.relative_to(K8S)) for p in manifests - applied - {SECRETS_EXAMPLE})
    assert not stray, f"files no overlay applies: {stray}"
    assert SECRETS_EXAMPLE not in applied, "secrets.example.yaml must never be applied"


@pytest.mark.parametrize("overlay", ALL)
def test_objects_are_unique_and_named(overlay: str) -> None:
    seen: set[tuple[str, str, str, str]] = set()
    for obj in render(overlay):
        assert {"apiVersion", "kind", "metadata"} <= set(obj), obj
        assert obj["metadata"].get("name"), f"a {obj['kind']} without a name"
        key = identity(obj)
        assert key not in seen, f"{overlay}: {key} twice (kustomize refuses duplicates)"
        seen.add(key)


@pytest.mark.parametrize("overlay", ALL)
def test_everything_lives_in_the_imgq_namespace(overlay: str) -> None:
    objects = render(overlay)
    named(objects, "Namespace", NAMESPACE)
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, identity(obj)


@pytest.mark.parametrize("overlay", ["keda", "hpa"])
def test_overlays_only_add_to_the_base(overlay: str) -> None:
    base = {identity(obj): obj for obj in render("base")}
    objects = {identity(obj): obj for obj in render(overlay)}
    for key, obj in base.items():
        assert objects.get(key) == obj, f"{overlay} changes or drops {key}"


def test_no_secret_or_password_is_applied() -> None:
    for name in OVERLAYS:
        assert not of_kind(render(name), "Secret"), f"{name} applies a Secret"


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", ALL)
def test_core_objects_match_the_kubernetes_schemas(overlay: str, version: str) -> None:
    checked = 0
    for obj in render(overlay):
        if obj["apiVersion"].split("/")[0] in CUSTOM_GROUPS:
            continue
        problem = None
        try:
            # Strict: a misspelt field (readinesProbe) is an error, not silently ignored.
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(part) for part in exc.absolute_path) or "(top)"
            problem = f"{identity(obj)} at {where}: {exc.message}"
        except kubernetes_validate.SchemaNotFoundError as exc:
            problem = exc.message
        assert problem is None, problem
        checked += 1
    assert checked >= 6, "the renderer found too few core objects to validate"


def test_kubernetes_validate_rejects_a_misspelt_field() -> None:
    """The check above can fail: strict validation refuses a field Kubernetes does not know."""
    deployment = named(render("base"), "Deployment", GATEWAY)
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("overlay", ALL)
def test_custom_resources_have_what_their_operators_require(overlay: str) -> None:
    objects = render(overlay)
    users = {u["metadata"]["name"] for u in of_kind(objects, "User")}
    for obj in objects:
        group = obj["apiVersion"].split("/")[0]
        if group not in CUSTOM_GROUPS:
            continue
        kind = CUSTOM_KINDS.get(obj["kind"])
        assert kind is not None, f"{identity(obj)}: no check for this custom kind"
        assert obj["apiVersion"] == kind.api_version, identity(obj)
        spec = obj.get("spec")
        assert isinstance(spec, dict), f"{identity(obj)} has no spec"
        unknown = sorted(set(spec) - kind.fields)
        assert not unknown, f"{identity(obj)}: {unknown} are not fields of {obj['kind']}"
        missing = sorted(kind.required - set(spec))
        assert not missing, f"{identity(obj)}: {missing} are required"
        if CLUSTER_REFERENCE in kind.fields:
            assert spec[CLUSTER_REFERENCE] == {"name": CLUSTER}, identity(obj)
        if obj["kind"] in {"Queue", "Exchange", "Binding", "Permission"}:
            assert spec.get("vhost") == "/", f"{identity(obj)}: imgq uses the vhost /"
        if obj["kind"] == "Queue":
            assert spec["type"] in {"quorum", "stream", "classic"}
            # The topology operator's webhook refuses a non-durable quorum queue; streams too.
            assert spec["durable"] is True, identity(obj)
            assert spec.get("autoDelete", False) is False
        if obj["kind"] == "Exchange":
            assert spec["type"] in {"direct", "fanout", "headers", "topic"}
            assert spec["durable"] is True, identity(obj)
        if obj["kind"] == "Binding":
            assert spec["destinationType"] in {"queue", "exchange"}
            assert spec["source"], identity(obj)
            assert spec["destination"], identity(obj)
        if obj["kind"] == "User":
            assert set(spec.get("tags", [])) <= {
                "management",
                "policymaker",
                "monitoring",
                "administrator",
            }
            assert spec["importCredentialsSecret"]["name"], "imgq never lets passwords be random"
        if obj["kind"] == "Permission":
            # Exactly one of the two, and a reference must name a User applied with it.
            assert ("user" in spec) != ("userReference" in spec), identity(obj)
            if "userReference" in spec:
                assert spec["userReference"]["name"] in users, identity(obj)
            assert set(spec["permissions"]) == {"configure", "write", "read"}
        if obj["kind"] == "ScaledObject":
            assert spec["scaleTargetRef"]["name"], identity(obj)
            assert spec["triggers"], identity(obj)
            auths = {a["metadata"]["name"] for a in of_kind(objects, "TriggerAuthentication")}
            for trigger in spec["triggers"]:
                assert trigger["type"], identity(obj)
                assert all(isinstance(v, str) for v in trigger["metadata"].values()), (
                    "KEDA trigger metadata values are strings"
                )
                if "authenticationRef" in trigger:
                    assert trigger["authenticationRef"]["name"] in auths, identity(obj)
        if obj["kind"] == "TriggerAuthentication":
            for ref in spec.get("secretTargetRef", []):
                assert set(ref) == {"parameter", "name", "key"}, identity(obj)


# --------------------------------------------------------------------------- references


@dataclass(frozen=True)
class Reference:
    kind: str  # Secret or ConfigMap
    name: str
    key: str | None  # None: the whole object
    optional: bool
    where: str


def references(objects: list[Obj]) -> Iterator[Reference]:
    for obj in objects:
        where = "/".join(identity(obj)[1:])
        if obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            for container in containers(obj):
                for env in container.get("env", []):
                    source = env.get("valueFrom") or {}
                    for field_name, kind in (
                        ("secretKeyRef", "Secret"),
                        ("configMapKeyRef", "ConfigMap"),
                    ):
                        if field_name in source:
                            ref = source[field_name]
                            yield Reference(
                                kind, ref["name"], ref["key"], ref.get("optional", False), where
                            )
                for env_from in container.get("envFrom", []):
                    for field_name, kind in (
                        ("secretRef", "Secret"),
                        ("configMapRef", "ConfigMap"),
                    ):
                        if field_name in env_from:
                            ref = env_from[field_name]
                            yield Reference(
                                kind, ref["name"], None, ref.get("optional", False), where
                            )
            for volume in pod_spec(obj).get("volumes", []):
                for field_name, kind, name_key in (
                    ("secret", "Secret", "secretName"),
                    ("configMap", "ConfigMap", "name"),
                ):
                    if field_name in volume:
                        source = volume[field_name]
                        optional = source.get("optional", False)
                        keys = [item["key"] for item in source.get("items", [])] or [None]
                        for key in keys:
                            yield Reference(kind, source[name_key], key, optional, where)
        elif obj["kind"] == "User" and "importCredentialsSecret" in obj["spec"]:
            # The topology operator needs both keys to import the credentials.
            name = obj["spec"]["importCredentialsSecret"]["name"]
            for key in ("username", "password"):
                yield Reference("Secret", name, key, False, where)
        elif obj["kind"] == "TriggerAuthentication":
            for ref in obj["spec"].get("secretTargetRef", []):
                yield Reference("Secret", ref["name"], ref["key"], False, where)


@pytest.mark.parametrize("overlay", ALL)
def test_every_referenced_secret_and_config_map_key_exists(overlay: str) -> None:
    objects = render(overlay)
    available: dict[tuple[str, str], set[str]] = {
        ("Secret", name): set(data) for name, data in example_secrets().items()
    }
    for obj in objects:
        if obj["kind"] in {"Secret", "ConfigMap"}:
            keys = {*obj.get("data", {}), *obj.get("stringData", {}), *obj.get("binaryData", {})}
            available[(obj["kind"], obj["metadata"]["name"])] = keys
    readme = (K8S / "README.md").read_text(encoding="utf-8")
    found = list(references(objects))
    assert found, "the renderer found no references to check"
    for ref in found:
        keys = available.get((ref.kind, ref.name))
        if keys is None:
            # Only an optional one may be missing, and the README must say how to create it.
            assert ref.optional, f"{ref.where}: {ref.kind} {ref.name!r} exists nowhere"
            assert ref.name in readme, f"k8s/README.md should say how to create {ref.name}"
            continue
        if ref.key is not None:
            assert ref.key in keys, f"{ref.where}: {ref.kind} {ref.name!r} has no key {ref.key!r}"


def test_example_secrets_hold_no_values_and_are_all_used() -> None:
    used = {ref.name for name in OVERLAYS for ref in references(render(name))}
    for name, data in example_secrets().items():
        assert name in used, f"secrets.example.yaml: nothing reads {name}"
        for key, value in data.items():
            if key != "username":
                assert value == "", f"secrets.example.yaml: {name}.{key} must stay empty"


@pytest.mark.parametrize("overlay", ALL)
def test_env_references_are_defined_before_use(overlay: str) -> None:
    # Kubernetes expands $(NAME) only for variables defined earlier in the same list, and
    # leaves anything else as literal text: a password would silently become "$(TYPO)".
    for obj in of_kind(render(overlay), "Deployment"):
        for container in containers(obj):
            defined: set[str] = set()
            for env in container.get("env", []):
                for name in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", env.get("value", "")):
                    assert name in defined, f"{container['name']}: $({name}) is not defined above"
                defined.add(env["name"])


@pytest.mark.parametrize("overlay", ALL)
def test_services_select_pods_and_their_ports(overlay: str) -> None:
    objects = render(overlay)
    services = of_kind(objects, "Service")
    assert services
    for service in services:
        selector = service["spec"]["selector"]
        assert selector, f"{service['metadata']['name']} selects nothing"
        pods = [
            d
            for d in of_kind(objects, "Deployment")
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(pods) == 1, f"{service['metadata']['name']} selects {len(pods)} workloads"
        ports = [p for c in containers(pods[0]) for p in c.get("ports", [])]
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            key = "name" if isinstance(target, str) else "containerPort"
            assert any(p.get(key) == target for p in ports), f"no container port {target!r}"


@pytest.mark.parametrize("overlay", ALL)
def test_deployment_selectors_match_their_pods(overlay: str) -> None:
    for deployment in of_kind(render(overlay), "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_disruption_budget_keeps_a_gateway() -> None:
    objects = render("base")
    (budget,) = of_kind(objects, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    selector = budget["spec"]["selector"]["matchLabels"]
    selected = [
        d["metadata"]["name"]
        for d in of_kind(objects, "Deployment")
        if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert selected == [GATEWAY]
    # With one replica, minAvailable 1 would block every node drain.
    assert named(objects, "Deployment", GATEWAY)["spec"]["replicas"] == 2


# --------------------------------------------------------------------------- probes


def gateway_routes() -> set[str]:
    source = (REPO / "gateway" / "app.py").read_text(encoding="utf-8")
    return set(re.findall(r"""add_get\(\s*["']([^"']+)["']""", source))


def test_gateway_probes_ask_the_real_endpoints() -> None:
    container = main_container(render("base"), GATEWAY)
    routes = gateway_routes()
    assert {"/healthz", "/readyz"} <= routes, "gateway/app.py no longer routes the probes"
    # Only liveness restarts a pod: the process alone, never the broker, so a broker outage
    # makes gateways unready and restarts none, those starting during it included.
    expected = {
        "livenessProbe": "/healthz",
        "startupProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    http_port = int(literal_env(container)["IMGQ_HTTP_PORT"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe_name, path in expected.items():
        probe = container[probe_name]["httpGet"]
        assert probe["path"] == path, probe_name
        port = probe["port"]
        assert (ports[port] if isinstance(port, str) else port) == http_port, probe_name
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= GATEWAY_STARTUP_BUDGET_SECONDS


def test_classifier_probes_run_its_health_check() -> None:
    container = main_container(render("base"), CLASSIFIER)
    assert module_source(HEALTHCHECK_MODULE), f"no module {HEALTHCHECK_MODULE}"
    # Liveness (and the startup probe, which holds liveness off while the models load) asks
    # for the process alone; readiness for the broker, as the image's own HEALTHCHECK does.
    assert container["startupProbe"]["exec"]["command"] == LIVE
    assert container["livenessProbe"]["exec"]["command"] == LIVE
    assert container["readinessProbe"]["exec"]["command"] == READY
    assert dockerfile_healthcheck("Dockerfile.classifier") == READY
    assert python_module(READY) == python_module(LIVE) == HEALTHCHECK_MODULE
    startup = container["startupProbe"]
    # At least the image's own HEALTHCHECK start period (models load before the first beat).
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60


@pytest.mark.parametrize("deployment", [GATEWAY, CLASSIFIER])
def test_only_liveness_restarts_and_it_tolerates_a_slow_moment(deployment: str) -> None:
    container = main_container(render("base"), deployment)
    for name in ("startupProbe", "livenessProbe"):
        probe = container[name]
        # Never the readiness check: that one fails whenever the broker is away.
        assert probe != container["readinessProbe"], name
        assert probe.get("httpGet", {}).get("path") != "/readyz", name
        assert "--ready" not in probe.get("exec", {}).get("command", []), name
    liveness = container["livenessProbe"]
    # A restart only after several checks in a row have failed, each given a few seconds.
    assert liveness["failureThreshold"] >= 3
    assert liveness["timeoutSeconds"] >= 3


@pytest.mark.parametrize("deployment", [GATEWAY, CLASSIFIER])
def test_containers_run_the_images_own_command(deployment: str) -> None:
    # No command/args: the image's CMD (python -m gateway / classifier_service) runs, which
    # tests/deploy/test_deploy_files.py checks against the repository.
    container = main_container(render("base"), deployment)
    assert "command" not in container
    assert "args" not in container


def test_grace_periods_outlast_the_shutdowns() -> None:
    objects = render("base")
    classifier = named(objects, "Deployment", CLASSIFIER)
    drain = float(
        literal_env(main_container(objects, CLASSIFIER)).get(
            "IMGQ_DRAIN_TIMEOUT", CLASSIFIER_DRAIN_DEFAULT_SECONDS
        )
    )
    assert pod_spec(classifier)["terminationGracePeriodSeconds"] > drain
    gateway = named(objects, "Deployment", GATEWAY)
    main_source = (REPO / "gateway" / "__main__.py").read_text(encoding="utf-8")
    match = re.search(r"shutdown_timeout=([\d.]+)", main_source)
    assert match, "gateway/__main__.py no longer sets shutdown_timeout"
    pre_stop = main_container(objects, GATEWAY)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = float(pre_stop[1]) + float(match.group(1))
    assert pod_spec(gateway)["terminationGracePeriodSeconds"] > needed


# --------------------------------------------------------------------------- topology


# A binding as the broker tells bindings apart: source, destination type ("queue" or
# "exchange"), destination, routing key, and its arguments (sorted, to be hashable).
BindingKey = tuple[str, str, str, str, tuple[tuple[str, Any], ...]]


def binding_key(
    source: str,
    destination_type: str,
    destination: str,
    routing_key: str,
    arguments: Mapping[str, Any] | None,
) -> BindingKey:
    return (
        source,
        destination_type,
        destination,
        routing_key,
        tuple(sorted((arguments or {}).items())),
    )


@dataclass
class Declared:
    """What declare_topology, declare_event_log and declare_model_queue ask a channel for."""

    # name -> (type, durable, arguments)
    exchanges: dict[str, tuple[str, bool, dict[str, Any]]] = field(default_factory=dict)
    queues: dict[str, tuple[bool, dict[str, Any]]] = field(default_factory=dict)
    bindings: set[BindingKey] = field(default_factory=set)
    # What was unbound: the manifests must not make these bindings either.
    unbound: set[BindingKey] = field(default_factory=set)


@dataclass
class _Exchange:
    declared: Declared
    name: str

    async def bind(
        self,
        exchange: _Exchange,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
        **_: Any,
    ) -> None:
        # Exchange-to-exchange: ``exchange`` is the source, this one the destination.
        key = binding_key(exchange.name, "exchange", self.name, routing_key, arguments)
        self.declared.bindings.add(key)


@dataclass
class _Queue:
    declared: Declared
    name: str

    def _key(
        self, exchange: _Exchange, routing_key: str | None, arguments: Mapping[str, Any] | None
    ) -> BindingKey:
        # aio-pika's Queue.bind and unbind use the queue's own name when given no routing key.
        key = self.name if routing_key is None else routing_key
        return binding_key(exchange.name, "queue", self.name, key, arguments)

    async def bind(
        self,
        exchange: _Exchange,
        routing_key: str | None = None,
        *,
        arguments: Mapping[str, Any] | None = None,
        **_: Any,
    ) -> None:
        self.declared.bindings.add(self._key(exchange, routing_key, arguments))

    async def unbind(
        self,
        exchange: _Exchange,
        routing_key: str | None = None,
        *,
        arguments: Mapping[str, Any] | None = None,
        **_: Any,
    ) -> None:
        # As on the broker: removes the binding if it was made, and is a no-op otherwise.
        key = self._key(exchange, routing_key, arguments)
        self.declared.bindings.discard(key)
        self.declared.unbound.add(key)


@dataclass
class _RecordingChannel:
    declared: Declared

    @property
    def default_exchange(self) -> _Exchange:
        # Always there, never declared: what declare_topology gives a replica to reply through.
        return _Exchange(self.declared, "")

    async def declare_exchange(
        self,
        name: str,
        type: Any,
        durable: bool = False,
        arguments: Mapping[str, Any] | None = None,
        **_: Any,
    ) -> _Exchange:
        self.declared.exchanges[name] = (
            getattr(type, "value", type),
            durable,
            dict(arguments or {}),
        )
        return _Exchange(self.declared, name)

    async def declare_queue(
        self,
        name: str,
        durable: bool = False,
        arguments: Mapping[str, Any] | None = None,
        **_: Any,
    ) -> _Queue:
        self.declared.queues[name] = (durable, dict(arguments or {}))
        return _Queue(self.declared, name)


def declared_topology(
    bounds: QueueBounds, retention: LogRetention, models: tuple[str, ...] = ()
) -> Declared:
    """All a deployment declares: the topology, the event log, the callbacks' queues (with the
    default retry schedule, which the manifests do not change) and the queue of each of
    ``models`` (what the setup step, gateways and replicas declare for the models they
    offer and serve)."""
    declared = Declared()
    channel: Any = _RecordingChannel(declared)

    async def run() -> None:
        topology = await declare_topology(channel, bounds)
        await declare_event_log(channel, topology.events, retention)
        retries = WebhookRetries(replication=bounds.replication)
        await declare_webhooks(channel, topology.events, retries)
        for model in models:
            await declare_model_queue(channel, topology.router, bounds, model)

    asyncio.run(run())
    return declared


def replication(arguments: Mapping[str, Any], replicas: int) -> dict[str, Any]:
    """The arguments that put a queue of this type on ``replicas`` nodes."""
    kind = arguments["x-queue-type"]
    if kind == "quorum":
        return dict(Replication(replicas).quorum())
    if kind == "stream":
        return dict(Replication(replicas).stream())
    raise AssertionError(f"a {kind} queue is not replicated; imgq declares none")


def queue_specs(objects: list[Obj]) -> dict[str, Obj]:
    return {q["spec"]["name"]: q["spec"] for q in of_kind(objects, "Queue")}


def service_bounds(objects: list[Obj]) -> tuple[QueueBounds, LogRetention]:
    """The bounds and replication the services are configured with (they must all agree):
    what they would declare if they declared. The broker URLs count as given, credentials
    and all, since only their number matters here."""
    gateway = literal_env(main_container(objects, GATEWAY))
    classifier = literal_env(main_container(objects, CLASSIFIER))
    assert QueueBounds.from_env(gateway) == QueueBounds.from_env(classifier)
    return QueueBounds.from_env(gateway), LogRetention.from_env(gateway)


def service_models(objects: list[Obj]) -> tuple[str, ...]:
    """Every model a Deployment offers or serves (IMGQ_MODELS): each has a work queue that
    gateways (for theirs) and replicas (for theirs) would declare."""
    models: dict[str, None] = {}
    for deployment in of_kind(objects, "Deployment"):
        for container in containers(deployment):
            env = literal_env(container)
            if "IMGQ_MODELS" in env:
                models.update(dict.fromkeys(catalog_models(env)))
    return tuple(models)


def manifest_bindings(objects: list[Obj]) -> set[BindingKey]:
    return {
        binding_key(
            b["spec"]["source"],
            b["spec"]["destinationType"],
            b["spec"]["destination"],
            b["spec"].get("routingKey", ""),
            b["spec"].get("arguments"),
        )
        for b in of_kind(objects, "Binding")
    }


def test_topology_resources_are_what_shared_topology_declares() -> None:
    objects = render("base")
    models = service_models(objects)
    assert models, "the Deployments name no models"
    declared = declared_topology(*service_bounds(objects), models)
    replicas = broker_replicas(objects)

    exchanges = {
        e["spec"]["name"]: (e["spec"]["type"], e["spec"]["durable"], e["spec"].get("arguments", {}))
        for e in of_kind(objects, "Exchange")
    }
    assert exchanges == declared.exchanges

    queues = queue_specs(objects)
    assert set(queues) == set(declared.queues)
    for name, (durable, arguments) in declared.queues.items():
        spec = queues[name]
        assert spec["durable"] is durable, name
        assert spec["arguments"] == arguments, name
        assert spec["type"] == arguments["x-queue-type"], name
        # The services compute the replication from their broker URLs: one per node.
        assert replication(arguments, replicas).items() <= arguments.items(), name

    bindings = manifest_bindings(objects)
    assert bindings == declared.bindings
    assert not bindings & declared.unbound, "a binding declare_topology removes"


def test_requests_reach_the_model_queues_through_the_router() -> None:
    """The same, spelt out: the exchange-to-exchange hop, the headers bindings, the fallback."""
    objects = render("base")
    bounds, _ = service_bounds(objects)
    exchanges = {e["spec"]["name"]: e["spec"] for e in of_kind(objects, "Exchange")}
    assert exchanges[MODEL_ROUTER]["type"] == "headers"
    assert exchanges[MODEL_ROUTER]["arguments"] == {"alternate-exchange": UNROUTED_EXCHANGE}
    assert exchanges[UNROUTED_EXCHANGE]["type"] == "fanout"
    bindings = manifest_bindings(objects)
    hop = binding_key(REQUESTS_EXCHANGE, "exchange", MODEL_ROUTER, REQUEST_ROUTING_KEY, None)
    assert hop in bindings
    # The shared queue hears only what the router could not place, never the requests exchange.
    sources = {b[0] for b in bindings if b[1:3] == ("queue", REQUESTS_QUEUE)}
    assert sources == {UNROUTED_EXCHANGE}
    queues = queue_specs(objects)
    for model in service_models(objects):
        name = model_queue(model)
        assert queues[name]["arguments"] == bounds.arguments(), name
        headers = binding_key(MODEL_ROUTER, "queue", name, name, model_binding(model))
        assert headers in bindings, name
    # Every model queue in the manifests belongs to a model a Deployment names.
    named_models = {model_queue(m) for m in service_models(objects)}
    assert {n for n in queues if n.startswith("imgq.model.")} == named_models


def test_queue_arguments_name_by_name() -> None:
    """The same, spelt out with shared/topology.py's own names and argument sets."""
    objects = render("base")
    bounds, retention = service_bounds(objects)
    queues = queue_specs(objects)
    quorum = {"x-quorum-initial-group-size": 3}
    stream = {"x-initial-cluster-size": 3}
    assert bounds.replication == retention.replication == Replication(3)
    assert queues[REQUESTS_QUEUE]["arguments"] == bounds.arguments()
    for model in service_models(objects):
        assert queues[model_queue(model)]["arguments"] == bounds.arguments()
    assert quorum.items() <= bounds.arguments().items()
    assert queues[EVENT_LOG]["arguments"] == retention.arguments()
    assert stream.items() <= retention.arguments().items()
    assert queues[CANCELLATIONS]["arguments"] == CANCELLATIONS_ARGUMENTS | stream
    for name in (DEAD_LETTER_QUEUE, DEAD_LETTER_NOTICES):
        assert queues[name]["arguments"] == DEAD_LETTER_ARGUMENTS | quorum


def test_every_queue_has_a_replica_on_every_broker_node() -> None:
    objects = render("base")
    replicas = broker_replicas(objects)
    assert replicas == 3
    for name, spec in queue_specs(objects).items():
        arguments = spec["arguments"]
        assert replication(arguments, replicas).items() <= arguments.items(), name


def test_topology_comparison_can_fail() -> None:
    """The recorder sees a changed bound, so a stale manifest would be caught."""
    objects = render("base")
    bounds, retention = service_bounds(objects)
    smaller = QueueBounds(max_jobs=bounds.max_jobs - 1, replication=bounds.replication)
    _, arguments = declared_topology(smaller, retention).queues[REQUESTS_QUEUE]
    assert queue_specs(objects)[REQUESTS_QUEUE]["arguments"] != arguments
    # And one broker URL fewer would declare two replicas, not three.
    _, arguments = declared_topology(QueueBounds(replication=Replication(2)), retention).queues[
        REQUESTS_QUEUE
    ]
    assert queue_specs(objects)[REQUESTS_QUEUE]["arguments"] != arguments
    # A model added to IMGQ_MODELS without its Queue and Binding would be caught too.
    more = declared_topology(bounds, retention, (*service_models(objects), "resnet50"))
    assert set(queue_specs(objects)) != set(more.queues)
    assert manifest_bindings(objects) != more.bindings


# --------------------------------------------------------------------------- broker users


def users_by_username(objects: list[Obj]) -> dict[str, Obj]:
    """User resources keyed by the username their Secret gives them."""
    secrets = example_secrets()
    users = {}
    for user in of_kind(objects, "User"):
        secret = secrets[user["spec"]["importCredentialsSecret"]["name"]]
        # Named as the user itself, so `kubectl get users` reads as the broker does.
        assert secret["username"] == user["metadata"]["name"]
        users[secret["username"]] = user
    return users


def grants(objects: list[Obj]) -> dict[str, tuple[str, str, str]]:
    users = {u["metadata"]["name"]: name for name, u in users_by_username(objects).items()}
    granted = {}
    for permission in of_kind(objects, "Permission"):
        spec = permission["spec"]
        username = users[spec["userReference"]["name"]] if "userReference" in spec else spec["user"]
        assert username not in granted, f"{username} has two Permissions"
        p = spec["permissions"]
        granted[username] = (p["configure"], p["write"], p["read"])
    return granted


def test_service_users_have_exactly_the_compose_grants() -> None:
    objects = render("base")
    granted = grants(objects)
    for username, grant in GRANTS.items():
        assert granted.get(username) == (grant.configure, grant.write, grant.read), username
    users = users_by_username(objects)
    for username in GRANTS:
        assert not users[username]["spec"].get("tags"), f"{username} needs no management access"


def test_producer_may_only_publish_jobs_and_read_its_replies() -> None:
    configure, write, read = grants(render("base"))[PRODUCER_USER]
    assert re.fullmatch(write, REQUESTS_EXCHANGE)
    others = ("imgq.events", EVENT_LOG, CANCELLATIONS, DEAD_LETTER_QUEUE, DEAD_LETTER_NOTICES)
    for name in (*others, "amq.default"):
        for pattern in (configure, write, read):
            assert not re.fullmatch(pattern, name), f"the producer may touch {name}"
    # The work queue shares the exchange's name: never take jobs off it, nor delete it.
    assert not re.fullmatch(read, REQUESTS_QUEUE)
    assert not re.fullmatch(configure, REQUESTS_QUEUE)
    # Its reply queue: declare it, bind it to imgq.replies (write on the queue, read on the
    # exchange) and consume it; never publish a reply itself.
    assert re.fullmatch(read, "amq.gen-Xb3")
    assert re.fullmatch(configure, "amq.gen-Xb3")
    assert re.fullmatch(write, "amq.gen-Xb3")
    assert re.fullmatch(read, REPLIES_EXCHANGE)
    assert not re.fullmatch(write, REPLIES_EXCHANGE)
    assert not re.fullmatch(configure, REPLIES_EXCHANGE)


@pytest.mark.parametrize("username", sorted(GRANTS))
def test_no_user_may_publish_through_the_default_exchange(username: str) -> None:
    # RabbitMQ checks a publish against its exchange only, never the routing key: write on the
    # default exchange would be write into every queue by name, the work queues included.
    _, write, _ = grants(render("base"))[username]
    assert not re.fullmatch(write, "amq.default"), username


def test_classifiers_reply_through_the_replies_exchange() -> None:
    _, write, read = grants(render("base"))[CLASSIFIER_USER]
    assert re.fullmatch(write, REPLIES_EXCHANGE)
    # Not read: binding a queue to it (a model queue, say) takes read on the exchange.
    assert not re.fullmatch(read, REPLIES_EXCHANGE)
    exchanges = {e["spec"]["name"]: e["spec"] for e in of_kind(render("base"), "Exchange")}
    # Direct: a reply reaches exactly the queue bound under its name, never a pattern.
    assert exchanges[REPLIES_EXCHANGE]["type"] == "direct"


def test_users_are_the_same_in_every_overlay() -> None:
    base = grants(render("base"))
    assert grants(render("hpa")) == base
    keda = grants(render("keda"))
    assert keda == base | {KEDA_USER: (NOTHING, NOTHING, NOTHING)}
    assert users_by_username(render("keda"))[KEDA_USER]["spec"]["tags"] == ["management"]


@pytest.mark.parametrize(
    ("deployment", "username"), [(GATEWAY, GATEWAY_USER), (CLASSIFIER, CLASSIFIER_USER)]
)
def test_services_reach_every_broker_node_as_their_own_user(deployment: str, username: str) -> None:
    objects = render("base")
    container = main_container(objects, deployment)
    env = {e["name"]: e for e in container["env"]}
    urls = env["IMGQ_BROKER_URLS"]["value"].split(",")
    replicas = broker_replicas(objects)
    hosts = []
    for raw in urls:
        url = urlsplit(raw)
        assert url.scheme == "amqp"
        assert url.port == AMQP_PORT
        assert url.path == "/", "the vhost /"
        hosts.append(url.hostname)
        for part, key in ((url.username, "username"), (url.password, "password")):
            match = re.fullmatch(r"\$\((\w+)\)", part or "")
            assert match, f"{deployment}: the {key} must come from the Secret, not the manifest"
            ref = env[match.group(1)]["valueFrom"]["secretKeyRef"]
            assert ref["key"] == key
            assert example_secrets()[ref["name"]]["username"] == username
    expected = [
        PER_POD_HOST.format(cluster=CLUSTER, index=i, namespace=NAMESPACE) for i in range(replicas)
    ]
    assert hosts == expected, "one URL per broker pod, through the headless Service"
    assert "IMGQ_BROKER_URL" not in env, "IMGQ_BROKER_URLS names every node"


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("overlay", ALL)
def test_every_imgq_variable_is_one_a_service_reads(overlay: str) -> None:
    names = {
        env["name"]
        for obj in of_kind(render(overlay), "Deployment")
        for container in containers(obj)
        for env in container.get("env", [])
    }
    assert any(name.startswith("IMGQ_") for name in names)
    assert not unknown_variables(names), "no service reads these"


def test_services_only_look_the_topology_up() -> None:
    objects = render("base")
    for deployment in (GATEWAY, CLASSIFIER):
        assert literal_env(main_container(objects, deployment))["IMGQ_DECLARE_TOPOLOGY"] == "false"


def resolved_env(container: Obj) -> dict[str, str]:
    """The container's variables as the pod sees them, with each Secret key read from
    secrets.example.yaml (whose only values are the usernames) and $(NAME) expanded."""
    secrets = example_secrets()
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            value = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], str(entry["value"]))
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            value = secrets[ref["name"]][ref["key"]]
        env[entry["name"]] = value
    return env


def test_gateway_trusts_each_event_only_from_its_senders() -> None:
    objects = render("base")
    env = resolved_env(main_container(objects, GATEWAY))
    senders = Senders.from_env(env)
    assert senders.enforced, "IMGQ_GATEWAY_USERS and IMGQ_CLASSIFIER_USERS must be set"
    # The users the services really connect as: their broker URLs' usernames.
    gateway_user = urlsplit(env["IMGQ_BROKER_URLS"].split(",")[0]).username
    classifier_env = resolved_env(main_container(objects, CLASSIFIER))
    classifier_user = urlsplit(classifier_env["IMGQ_BROKER_URLS"].split(",")[0]).username
    assert (gateway_user, classifier_user) == (GATEWAY_USER, CLASSIFIER_USER)
    assert senders.gateways == {gateway_user}
    assert senders.classifiers == {classifier_user}
    queued = JobEvent(new_job_id(), JobStatus.QUEUED, "efficientnet_lite0", "cat.jpg")
    assert senders.refuses(queued, classifier_user) is not None
    assert senders.refuses(queued.advance(JobStatus.STARTED), gateway_user) is not None
    assert senders.refuses(queued.advance(JobStatus.STARTED), classifier_user) is None
    assert senders.refuses(queued, "imgq-producer") is not None


def test_gateway_listens_for_the_service_and_requires_tokens() -> None:
    objects = render("base")
    container = main_container(objects, GATEWAY)
    env = literal_env(container)
    assert env["IMGQ_HTTP_HOST"] == "0.0.0.0"
    tokens = next(e for e in container["env"] if e["name"] == "IMGQ_API_TOKENS")
    ref = tokens["valueFrom"]["secretKeyRef"]
    assert not ref.get("optional", False), "a gateway behind a Service must not be open"
    assert env["IMGQ_MODELS"] == literal_env(main_container(objects, CLASSIFIER))["IMGQ_MODELS"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["IMGQ_GALLERY_DIR"] in mounts, "the gallery folder must exist in the pod"


def test_classifier_threads_match_its_cpu() -> None:
    container = main_container(render("base"), CLASSIFIER)
    threads = int(literal_env(container)["IMGQ_INFERENCE_THREADS"])
    requests = cpu_cores(container["resources"]["requests"]["cpu"])
    limits = cpu_cores(container["resources"]["limits"]["cpu"])
    # Replicas x threads must not exceed the cores: each replica gets exactly its threads' worth.
    assert requests == limits == threads
    assert container["ports"][0]["name"] == "metrics"
    metrics_port = int(literal_env(container)["IMGQ_METRICS_PORT"])
    assert container["ports"][0]["containerPort"] == metrics_port
    assert literal_env(container)["IMGQ_METRICS_HOST"] == "0.0.0.0"


def dockerfile_env(dockerfile: str) -> dict[str, str]:
    """ENV of the Dockerfile's last stage, the image itself (KEY=VALUE form)."""
    instructions = parse_dockerfile(dockerfile)
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    env: dict[str, str] = {}
    for keyword, args in instructions[last_from:]:
        if keyword == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", args))
    return env


def test_classifier_serves_the_models_baked_into_its_image() -> None:
    container = main_container(render("base"), CLASSIFIER)
    cache = literal_env(container)["IMGQ_MODEL_CACHE"]
    mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
    # From the image, not from a volume that would start empty.
    assert not any(cache == m or cache.startswith(m.rstrip("/") + "/") for m in mounts)
    baked = dockerfile_env("Dockerfile.classifier").get("IMGQ_MODEL_CACHE")
    if baked is None:
        pytest.skip("Dockerfile.classifier does not bake a model folder (IMGQ_MODEL_CACHE) yet")
    assert cache == baked


# --------------------------------------------------------------------------- pod security


def dockerfile_uid(dockerfile: str) -> int:
    for run in instructions_named(dockerfile, "RUN"):
        match = re.search(r"useradd\b.*--uid\s+(\d+)", run)
        if match:
            return int(match.group(1))
    raise AssertionError(f"{dockerfile} creates no user with a fixed uid")


@pytest.mark.parametrize(
    ("deployment", "dockerfile"),
    [(GATEWAY, "Dockerfile.gateway"), (CLASSIFIER, "Dockerfile.classifier")],
)
def test_pods_run_locked_down(deployment: str, dockerfile: str) -> None:
    workload = named(render("base"), "Deployment", deployment)
    spec = pod_spec(workload)
    assert spec["automountServiceAccountToken"] is False
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == dockerfile_uid(dockerfile)
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for container in containers(workload):
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), (container["name"], kind)
        tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        assert tmp, f"{container['name']}: a read-only root needs a writable /tmp"
        assert "emptyDir" in volumes[tmp[0]["name"]]


def test_classifier_health_file_is_on_the_writable_tmp() -> None:
    container = main_container(render("base"), CLASSIFIER)
    health_file = literal_env(container).get("IMGQ_HEALTH_FILE", "/tmp/imgq-classifier.alive")
    assert health_file.startswith("/tmp/")


def test_broker_cluster() -> None:
    objects = render("base")
    (cluster,) = of_kind(objects, "RabbitmqCluster")
    spec = cluster["spec"]
    assert cluster["metadata"]["name"] == CLUSTER
    assert spec["replicas"] == 3
    resources = spec["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) & set(resources["limits"])
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    assert spec["persistence"]["storage"]
    compose = yaml.safe_load((REPO / "compose" / "compose.yaml").read_text(encoding="utf-8"))
    assert spec["image"] == compose["services"]["broker"]["image"], "one RabbitMQ version"
    legacy = cluster["metadata"].get("annotations", {}).get(LEGACY_STARTUP_PROBE)
    if version_of(spec["image"]) < HTTP_STARTUP_PROBE_SINCE:
        assert legacy == "true", "this RabbitMQ lacks the operator's HTTP startup check"
    else:
        assert legacy is None, "the legacy probe is only for RabbitMQ before 4.2.4"
    # Every setting compose's nodes read (compose/rabbitmq.conf: the 16 MiB message cap), with
    # the same value: the limits must not depend on where the broker runs.
    additional = spec["rabbitmq"]["additionalConfig"]
    cluster_settings = dict(
        (key.strip(), value.strip())
        for key, _, value in (
            line.partition("=")
            for line in additional.splitlines()
            if line.strip() and not line.strip().startswith("#")
        )
    )
    assert rabbitmq_settings().items() <= cluster_settings.items()
    assert int(cluster_settings["max_message_size"]) == MAX_MESSAGE_BYTES == 16 << 20
    override = spec["override"]["statefulSet"]["spec"]["template"]["spec"]
    assert override["securityContext"]["runAsNonRoot"] is True
    assert override["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (rabbitmq,) = override["containers"]
    assert rabbitmq["name"] == "rabbitmq", "the override must name the operator's container"
    assert rabbitmq["securityContext"]["allowPrivilegeEscalation"] is False
    assert rabbitmq["securityContext"]["capabilities"] == {"drop": ["ALL"]}


# --------------------------------------------------------------------------- network policies


@dataclass(frozen=True)
class Pod:
    """A pod as NetworkPolicies see it: its namespace's labels, its own, its named ports."""

    namespace: str
    labels: Mapping[str, str]
    ports: Mapping[str, int] = field(default_factory=dict)

    @property
    def namespace_labels(self) -> dict[str, str]:
        # Kubernetes labels every namespace with its own name (1.22 and later).
        return {"kubernetes.io/metadata.name": self.namespace}


def selects(selector: Obj | None, labels: Mapping[str, str]) -> bool:
    """A label selector as Kubernetes applies it (matchLabels and matchExpressions)."""
    selector = selector or {}
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _peer_matches(peer: Obj, source: Pod, policy_namespace: str) -> bool:
    assert "ipBlock" not in peer, "imgq's policies select pods, not addresses"
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], source.namespace_labels):
            return False
    elif source.namespace != policy_namespace:
        return False  # a podSelector alone means pods of the policy's own namespace
    return selects(peer.get("podSelector"), source.labels)


def _port_matches(entry: Obj, target: Pod, port: int) -> bool:
    assert entry.get("protocol", "TCP") == "TCP"
    wanted = entry.get("port")
    if wanted is None:
        return True
    if isinstance(wanted, str):
        return target.ports.get(wanted) == port
    return int(wanted) <= port <= int(entry.get("endPort", wanted))


def may_connect(objects: list[Obj], source: Pod, target: Pod, port: int) -> bool:
    """Whether the policies let ``source`` open a TCP connection to ``target``'s ``port``."""
    isolating = [
        policy
        for policy in of_kind(objects, "NetworkPolicy")
        if policy["metadata"]["namespace"] == target.namespace
        and selects(policy["spec"]["podSelector"], target.labels)
        and "Ingress" in policy["spec"].get("policyTypes", ["Ingress"])
    ]
    if not isolating:
        return True
    return any(
        (
            not rule.get("from")
            or any(_peer_matches(peer, source, NAMESPACE) for peer in rule["from"])
        )
        and (not rule.get("ports") or any(_port_matches(e, target, port) for e in rule["ports"]))
        for policy in isolating
        for rule in policy["spec"].get("ingress", [])
    )


# The labels the Cluster Operator gives the RabbitmqCluster's pods (the anti-affinity in
# rabbitmqcluster.yaml selects them the same way).
BROKER_POD = Pod(
    NAMESPACE,
    {
        "app.kubernetes.io/name": CLUSTER,
        "app.kubernetes.io/component": "rabbitmq",
        "app.kubernetes.io/part-of": "rabbitmq",
    },
)
# Where the operators, KEDA and Prometheus run, as they install by default.
TOPOLOGY_OPERATOR = Pod(
    "rabbitmq-system",
    {
        "app.kubernetes.io/name": "messaging-topology-operator",
        "app.kubernetes.io/component": "rabbitmq-operator",
    },
)
KEDA_OPERATOR = Pod("keda", {"app.kubernetes.io/name": "keda-operator", "app": "keda-operator"})
PROMETHEUS = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"})
INGRESS_CONTROLLER = Pod("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
# Anything else that happens to run in the namespace (a debugging pod, a compromised job).
STRANGER = Pod(NAMESPACE, {"run": "debug"})
AMQP, BROKER_HTTP_API, BROKER_METRICS = AMQP_PORT, MANAGEMENT_PORT, 15692


def workload_pod(objects: list[Obj], deployment: str, namespace: str = NAMESPACE) -> Pod:
    workload = named(objects, "Deployment", deployment)
    ports = {
        p["name"]: p["containerPort"] for c in containers(workload) for p in c.get("ports", [])
    }
    return Pod(namespace, workload["spec"]["template"]["metadata"]["labels"], ports)


def test_every_pod_of_the_namespace_is_closed_by_default() -> None:
    objects = render("base")
    closed = [
        policy
        for policy in of_kind(objects, "NetworkPolicy")
        if policy["spec"]["podSelector"] == {} and not policy["spec"].get("ingress")
    ]
    assert closed, "a default-deny policy selecting every pod"
    assert "Ingress" in closed[0]["spec"]["policyTypes"]
    for pod in (workload_pod(objects, GATEWAY), workload_pod(objects, CLASSIFIER), BROKER_POD):
        assert not may_connect(objects, STRANGER, pod, 12345)


@pytest.mark.parametrize("overlay", ALL)
def test_only_the_services_reach_amqp(overlay: str) -> None:
    objects = render(overlay)
    gateway, classifier = workload_pod(objects, GATEWAY), workload_pod(objects, CLASSIFIER)
    assert may_connect(objects, gateway, BROKER_POD, AMQP)
    assert may_connect(objects, classifier, BROKER_POD, AMQP)
    for source in (STRANGER, PROMETHEUS, TOPOLOGY_OPERATOR, KEDA_OPERATOR, INGRESS_CONTROLLER):
        assert not may_connect(objects, source, BROKER_POD, AMQP), source
    # The services' labels count only inside the namespace: elsewhere anyone can set them.
    lookalike = workload_pod(objects, GATEWAY, namespace="elsewhere")
    assert not may_connect(objects, lookalike, BROKER_POD, AMQP)
    # And the services reach nothing else on the broker.
    for port in (BROKER_HTTP_API, 25672, 4369):
        assert not may_connect(objects, gateway, BROKER_POD, port), port


@pytest.mark.parametrize("overlay", ALL)
def test_only_the_gateways_http_port_is_offered(overlay: str) -> None:
    objects = render(overlay)
    gateway, classifier = workload_pod(objects, GATEWAY), workload_pod(objects, CLASSIFIER)
    http = gateway.ports["http"]
    for source in (INGRESS_CONTROLLER, STRANGER, PROMETHEUS):
        assert may_connect(objects, source, gateway, http)
        assert not may_connect(objects, source, gateway, http + 1)
    # A replica takes its work from the broker: nothing connects to it but the scraper.
    metrics = classifier.ports["metrics"]
    for source in (INGRESS_CONTROLLER, STRANGER, gateway, BROKER_POD):
        assert not may_connect(objects, source, classifier, metrics)
    assert may_connect(objects, PROMETHEUS, classifier, metrics)
    assert may_connect(objects, PROMETHEUS, BROKER_POD, BROKER_METRICS)
    # Every named port a policy opens is one its pods have.
    for policy in of_kind(objects, "NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            for entry in rule.get("ports", []):
                if isinstance(entry["port"], str):
                    assert entry["port"] in gateway.ports | classifier.ports, entry


@pytest.mark.parametrize("overlay", ALL)
def test_broker_nodes_cluster_and_operators_reconcile(overlay: str) -> None:
    objects = render(overlay)
    # Erlang distribution, epmd, stream replication, CLI tools.
    for port in (25672, 4369, 6000, 6500, 35672, 35682, AMQP):
        assert may_connect(objects, BROKER_POD, BROKER_POD, port), port
    assert may_connect(objects, TOPOLOGY_OPERATOR, BROKER_POD, BROKER_HTTP_API)
    impostor = Pod(NAMESPACE, TOPOLOGY_OPERATOR.labels)
    assert not may_connect(objects, impostor, BROKER_POD, BROKER_HTTP_API)
    # KEDA reads the queues' lengths from the HTTP API only where it scales the classifiers.
    assert may_connect(objects, KEDA_OPERATOR, BROKER_POD, BROKER_HTTP_API) is (overlay == "keda")
    assert not may_connect(objects, KEDA_OPERATOR, BROKER_POD, AMQP)


def test_policies_select_the_pods_they_mean() -> None:
    objects = render("base")
    policies = {
        p["metadata"]["name"]: p["spec"]["podSelector"] for p in of_kind(objects, "NetworkPolicy")
    }
    assert selects(policies["imgq-broker"], BROKER_POD.labels)
    # The broker's anti-affinity names its pods by the same label.
    affinity = named(objects, "RabbitmqCluster", CLUSTER)["spec"]["affinity"]["podAntiAffinity"]
    (term,) = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["labelSelector"] == policies["imgq-broker"]
    assert selects(policies["imgq-gateway"], workload_pod(objects, GATEWAY).labels)
    assert not selects(policies["imgq-gateway"], workload_pod(objects, CLASSIFIER).labels)
    assert selects(policies["imgq-classifier"], workload_pod(objects, CLASSIFIER).labels)


# --------------------------------------------------------------------------- autoscaling


def autoscalers(objects: list[Obj]) -> list[Obj]:
    return of_kind(objects, "ScaledObject") + of_kind(objects, "HorizontalPodAutoscaler")


def test_base_has_no_autoscaler_and_leaves_the_count_to_one() -> None:
    objects = render("base")
    assert not autoscalers(objects)
    # A replica count in the Deployment would be reset by every apply under an autoscaler.
    assert "replicas" not in named(objects, "Deployment", CLASSIFIER)["spec"]


def test_keda_scales_the_classifiers_on_their_work_queues() -> None:
    objects = render("keda")
    (scaler,) = autoscalers(objects)
    assert scaler["kind"] == "ScaledObject"
    spec = scaler["spec"]
    target = spec["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert target["name"] == CLASSIFIER
    named(objects, "Deployment", CLASSIFIER)
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    # One trigger per queue the Deployment's replicas consume: their models' queues and the
    # shared queue of unrouted requests.
    served = catalog_models(literal_env(main_container(objects, CLASSIFIER)))
    queues = {t["metadata"]["queueName"]: t for t in spec["triggers"]}
    assert len(queues) == len(spec["triggers"]), "one trigger per queue"
    assert set(queues) == {REQUESTS_QUEUE, *map(model_queue, served)}
    for trigger in spec["triggers"]:
        assert trigger["type"] == "rabbitmq"
        metadata = trigger["metadata"]
        assert metadata["mode"] == "QueueLength"
        assert float(metadata["value"]) > 0
        assert metadata["protocol"] == "http"
        assert metadata["vhostName"] == "/"
        host = urlsplit(metadata["host"])
        assert host.hostname == CLIENT_SERVICE_HOST.format(cluster=CLUSTER, namespace=NAMESPACE)
        assert host.port == MANAGEMENT_PORT
        assert host.username is None, "credentials come from the TriggerAuthentication"
        auth = named(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        params = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
        assert set(params) == {"username", "password"}
        secret = params["username"]["name"]
        assert params["password"]["name"] == secret
        assert example_secrets()[secret]["username"] == KEDA_USER
    # The replicas share one backlog: scale on the sum of the queues, not on the longest
    # (which is what the HPA makes of several metrics without a formula).
    modifiers = spec["advanced"]["scalingModifiers"]
    terms = re.split(r"\s*\+\s*", modifiers["formula"].strip())
    names = [t["name"] for t in spec["triggers"]]
    assert sorted(terms) == sorted(names), "the formula adds every trigger once"
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) for name in names)
    assert modifiers["metricType"] == "AverageValue"
    assert float(modifiers["target"]) > 0
    assert not of_kind(objects, "HorizontalPodAutoscaler"), "KEDA makes its own"


def test_hpa_scales_the_classifiers_on_cpu() -> None:
    objects = render("hpa")
    (scaler,) = autoscalers(objects)
    assert scaler["kind"] == "HorizontalPodAutoscaler"
    assert scaler["apiVersion"] == "autoscaling/v2"
    spec = scaler["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": CLASSIFIER,
    }
    assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
    (metric,) = spec["metrics"]
    assert metric["type"] == "Resource"
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert not of_kind(objects, "ScaledObject")


def test_readme_tells_how_to_apply_each_overlay() -> None:
    readme = (K8S / "README.md").read_text(encoding="utf-8")
    for path in OVERLAYS.values():
        assert f"kubectl apply -k {path.relative_to(REPO)}" in readme
    assert "secrets.example.yaml" in readme
