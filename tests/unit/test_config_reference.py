"""The configuration reference is generated from the code that reads the variables, and the
README carries exactly what it generates: no variable can be read without being listed."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import compose.setup_broker
from classifier_service.settings import ClassifierSettings
from gateway.settings import GatewaySettings
from shared import config_reference
from shared.config_reference import END, START, all_variables, markdown_table, read_by
from shared.settings import CLASSIFIER, GATEWAY, SETUP, VARIABLES, Service, Variable, variable
from tests.service_settings import REPO, SETTINGS_MODULES, variables_read

# Where services' code lives. Only Python: a compose file's own interpolation variables
# (IMGQ_BROKER_PASSWORD, IMGQ_ERLANG_COOKIE) are compose's, and what deployment files hand to
# the services is checked against the services by test_compose_cluster.py and test_k8s.py.
SERVICE_CODE = ("gateway", "classifier_service", "shared", "compose")
# A name that ends in "_" is a family written as IMGQ_LOG_* (or an f-string's prefix).
_MENTION = re.compile(r"IMGQ_[A-Z0-9_]*")


class RecordingEnv(Mapping[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values
        self.looked_up: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.looked_up.add(name)
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def imgq_names(self) -> set[str]:
        return {name for name in self.looked_up if name.startswith("IMGQ_")}


def readme_table() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert readme.count(START) == readme.count(END) == 1, "README lost its table's markers"
    return readme.split(START + "\n", 1)[1].split(END, 1)[0]


def test_readme_table_is_the_generated_one() -> None:
    assert readme_table() == markdown_table(all_variables()), (
        "README's configuration table is out of date: "
        "run python -m shared.config_reference --write README.md"
    )


def test_the_table_sits_in_the_configuration_section() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Configuration\n", 1)[1].split("\n## ", 1)[0]
    assert START in section
    assert END in section


def test_every_imgq_name_in_the_services_code_is_declared() -> None:
    declared = {var.name for var in all_variables()}
    undeclared: dict[str, list[str]] = {}
    for folder in SERVICE_CODE:
        for path in sorted((REPO / folder).rglob("*.py")):
            for name in set(_MENTION.findall(path.read_text(encoding="utf-8"))):
                known = (
                    any(other.startswith(name) for other in declared)
                    if name.endswith("_")
                    else name in declared
                )
                if not known:
                    undeclared.setdefault(name, []).append(str(path.relative_to(REPO)))
    assert not undeclared, "mentioned in the code but not declared with variable()"


def test_the_settings_modules_read_exactly_the_declared_variables() -> None:
    # tests/service_settings.py finds the names the deployment-file checks accept; it and the
    # registry must agree, or those checks would accept a variable the reference lacks.
    declared = {var.name for var in all_variables()}
    read = variables_read((*SETTINGS_MODULES, "compose/setup_broker.py"))
    assert not read - declared, "read without variable(): declare them"
    assert not declared - read, (
        "declared in a module that SETTINGS_MODULES (tests/service_settings.py) does not list: "
        "add the module there, or deployment files that set these fail their checks"
    )


def _read_by_gateway() -> set[str]:
    env = RecordingEnv({})
    GatewaySettings.from_env(env)
    return env.imgq_names()


def _read_by_classifier() -> set[str]:
    env = RecordingEnv({})
    ClassifierSettings.from_env(env)
    return env.imgq_names()


def _read_by_setup(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    async def declare_nothing(*args: object) -> None:
        pass

    monkeypatch.setattr(compose.setup_broker, "create_users", lambda *args: None)
    monkeypatch.setattr(compose.setup_broker, "declare", declare_nothing)
    env = RecordingEnv({var.name: "secret" for var in all_variables() if var.shown == "required"})
    compose.setup_broker.setup(env)
    return env.imgq_names()


def test_each_service_reads_what_the_reference_says_it_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    all_variables()
    read = {
        GATEWAY: _read_by_gateway(),
        CLASSIFIER: _read_by_classifier(),
        SETUP: _read_by_setup(monkeypatch),
    }
    assert set(read) == set(Service)
    for service, names in read.items():
        assert names == {var.name for var in read_by(service)}, service


def test_a_variable_declared_again_differently_is_refused() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        variable("IMGQ_HTTP_PORT", 9999, GATEWAY, "another meaning")
    assert VARIABLES["IMGQ_HTTP_PORT"].default == 8080


def test_table_cells_escape_pipes() -> None:
    var = Variable("IMGQ_X", "a|b", (GATEWAY, SETUP), "one | two")
    assert markdown_table([var]).splitlines()[-1] == (
        r"| `IMGQ_X` | gateway, setup | `a\|b` | one \| two |"
    )


def test_write_replaces_only_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = tmp_path / "README.md"
    document.write_text(f"# Title\n\n{START}\n| stale |\n{END}\n\nafter\n", encoding="utf-8")
    assert config_reference.main(["--write", str(document)]) == 0
    table = markdown_table(all_variables())
    assert document.read_text(encoding="utf-8") == f"# Title\n\n{START}\n{table}{END}\n\nafter\n"
    assert config_reference.main([]) == 0
    assert capsys.readouterr().out == table


def test_write_refuses_a_file_without_markers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = tmp_path / "README.md"
    document.write_text("# No table here\n", encoding="utf-8")
    assert config_reference.main(["--write", str(document)]) == 1
    assert "markers are missing" in capsys.readouterr().err
    assert document.read_text(encoding="utf-8") == "# No table here\n"
