"""schemathesis.toml, what the Schemathesis run against the served /openapi.json is told beside
the document (tests/service/test_schemathesis.py): it may say what the schema cannot,
operation by operation, but it turns no check off for the whole API."""

from __future__ import annotations

from tests.openapi_contract import SCHEMATHESIS_CONFIG


def test_the_config_turns_no_check_off_for_the_whole_api() -> None:
    """The settings file may say what the schema cannot, operation by operation; it must not
    silence a check everywhere."""
    from schemathesis.checks import CHECKS, load_all_checks
    from schemathesis.config import SchemathesisConfig

    load_all_checks()
    project = SchemathesisConfig.from_path(str(SCHEMATHESIS_CONFIG)).projects.default
    checks = project.checks_config_for()
    off = sorted(
        name for name in CHECKS.get_all_names() if not checks.get_by_name(name=name).enabled
    )
    assert off == []
    assert project.operations.operations, "expected the per-operation entries"
