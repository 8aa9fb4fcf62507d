"""The webhook receiver's checks against MLflow's own signing code and names (no server: the end-to-end run
with a real `mlflow server` is tests/flows/test_serve_webhook.py)."""

from __future__ import annotations

import json
import time

import pytest

from tasks.settings import ConfigError, ServingConfig
from tasks.webhook import check_delivery, moved_alias, webhook_name, webhook_secret


def delivery(secret: str, body: bytes, stamp: int) -> dict[str, str]:
    from mlflow.webhooks.delivery import _generate_hmac_signature

    return {
        "x-mlflow-delivery-id": "0c1d",
        "x-mlflow-timestamp": str(stamp),
        "x-mlflow-signature": _generate_hmac_signature(secret, "0c1d", str(stamp), body.decode()),
    }


def test_mlflow_signed_deliveries_pass_and_anything_else_is_refused():
    body = json.dumps({"entity": "model_version_alias", "action": "deleted", "data": {}}).encode()
    now = int(time.time())
    assert check_delivery("k", body, delivery("k", body, now)) is None
    assert check_delivery("other", body, delivery("k", body, now)) == "invalid X-MLflow-Signature"
    assert check_delivery("k", body + b" ", delivery("k", body, now)) == "invalid X-MLflow-Signature"
    assert "more than 300 s" in check_delivery("k", body, delivery("k", body, now - 301))
    assert "missing" in check_delivery("k", body, {})


def test_alias_events_are_recognised_from_mlflow_payloads():
    from mlflow.entities.webhook import WebhookEvent
    from mlflow.webhooks.types import get_example_payload_for_event

    def wrapped(event: str) -> bytes:
        entity, action = event.split(".")
        data = get_example_payload_for_event(WebhookEvent(entity, action))
        return json.dumps({"entity": entity, "action": action, "data": data}).encode()

    assert moved_alias(wrapped("model_version_alias.created")) == ("example_model", "example_alias")
    assert moved_alias(wrapped("model_version_alias.deleted")) == ("example_model", "example_alias")
    assert moved_alias(wrapped("model_version.created")) is None
    assert moved_alias(b"not json") is None


def test_webhook_names_follow_mlflows_rule():
    from mlflow.utils.validation import _validate_webhook_name

    for kb in ("kb", "a" * 64, "x" * 54 + "_-.", "kb.v2"):
        _validate_webhook_name(webhook_name(kb))  # raises when MLflow would refuse the name


def test_a_named_secret_must_be_set(monkeypatch):
    monkeypatch.delenv("HOOK_SECRET", raising=False)
    assert webhook_secret(ServingConfig()) is None
    with pytest.raises(ConfigError, match="HOOK_SECRET is not set"):
        webhook_secret(ServingConfig(webhook_secret_env="HOOK_SECRET"))
    with pytest.raises(ConfigError, match="needs serving.webhook_secret_env"):
        webhook_secret(ServingConfig(webhook_url="http://h:8000/hooks/mlflow"))
    monkeypatch.setenv("HOOK_SECRET", "value")
    assert webhook_secret(ServingConfig(webhook_secret_env="HOOK_SECRET")) == "value"
