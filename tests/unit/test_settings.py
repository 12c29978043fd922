"""Settings come from the environment, typed, and fail at once on a bad value."""

from __future__ import annotations

import pytest

from classifier_service.settings import ClassifierSettings
from gateway.settings import GatewaySettings
from shared.errors import SettingsError


def test_defaults() -> None:
    gateway = GatewaySettings.from_env({})
    assert gateway.port == 8080
    assert gateway.max_wait == 30
    assert gateway.gallery_dir.name == "images"
    classifier = ClassifierSettings.from_env({})
    assert classifier.inference_threads == 1
    assert classifier.batch_size == 4
    # Two batches in hand: the next one is there when this one's inference ends.
    assert classifier.prefetch == 8
    assert classifier.models == ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def test_values_are_parsed() -> None:
    env = {"IMGQ_HTTP_PORT": "9000", "IMGQ_MODELS": "efficientnet_lite2, efficientnet_lite0"}
    settings = GatewaySettings.from_env(env)
    assert settings.port == 9000
    assert settings.models == ("efficientnet_lite2", "efficientnet_lite0")
    classifier = ClassifierSettings.from_env({"IMGQ_BATCH_SIZE": "4", "IMGQ_BATCH_WAIT_MS": "5"})
    assert classifier.prefetch == 8
    assert classifier.batch_wait == pytest.approx(0.005)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IMGQ_HTTP_PORT": "eighty"}, "IMGQ_HTTP_PORT must be an integer"),
        ({"IMGQ_MODELS": "resnet"}, "unknown models"),
        ({"IMGQ_GALLERY_DIR": "/nonexistent/gallery"}, "not a directory"),
        ({"IMGQ_PUBLISH_TIMEOUT": "0"}, "at least"),
        ({"IMGQ_BROKER_URL": " "}, "must not be empty"),
    ],
)
def test_gateway_rejects_bad_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        GatewaySettings.from_env(env)


def test_classifier_rejects_bad_values() -> None:
    with pytest.raises(SettingsError, match="IMGQ_INFERENCE_THREADS must be at least 1"):
        ClassifierSettings.from_env({"IMGQ_INFERENCE_THREADS": "0"})
