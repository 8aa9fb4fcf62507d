"""The MLflow registry webhook that tells `instill serve` that an alias moved.

MLflow (>= 3.3, a tracking *server* with a SQL backend) posts ``model_version_alias.created`` /
``.deleted`` events to a URL registered with ``MlflowClient.create_webhook``; deliveries come only from the
server's REST handlers, so a tracking URI that is a database (``sqlite:///``, ``postgresql://``) never sends
one. Each delivery carries ``X-MLflow-Delivery-Id``, ``X-MLflow-Timestamp`` and, when the webhook has a
secret, ``X-MLflow-Signature: v1,<base64 HMAC-SHA256 of "{delivery id}.{timestamp}.{body}">``
(mlflow/webhooks/delivery.py, after the Standard Webhooks scheme).

- ``register_webhook``: create, or update in place, the knowledge base's webhook (``instill-<kb>``); run by
  `instill serve` when ``serving.webhook_url`` is set.
- ``check_delivery``: the signature and the timestamp's freshness (replays older than ``TOLERANCE_S`` are
  refused); ``None`` when the delivery is good, else the reason.

The secret is read from the environment variable ``serving.webhook_secret_env`` names and is never logged.
MLflow stores it encrypted with ``MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY`` (the tracking server's setting).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tasks.settings import ConfigError, ServingConfig
from tasks.sources.base import redact

ALIAS_EVENTS = ("model_version_alias.created", "model_version_alias.deleted")
TOLERANCE_S = 300  # Standard Webhooks' default window against replays


def webhook_name(kb: str) -> str:
    """MLflow's webhook name rule: letters, digits, ``._-``, at most 63, alphanumeric at both ends."""
    return re.sub(r"[^A-Za-z0-9]+$", "", f"instill-{kb}"[:63])


def webhook_secret(serving: ServingConfig) -> str | None:
    """The secret ``serving.webhook_secret_env`` names; a named but unset variable is a config error (a
    receiver that silently skipped the check would accept anything)."""
    if serving.webhook_secret_env is None:
        if serving.webhook_url is not None:
            raise ConfigError("serving.webhook_url needs serving.webhook_secret_env (the HMAC secret)")
        return None
    value = os.environ.get(serving.webhook_secret_env)
    if not value:
        raise ConfigError(
            f"serving.webhook_secret_env: environment variable {serving.webhook_secret_env} is not set"
        )
    return value


@dataclass(frozen=True)
class Registered:
    webhook_id: str
    name: str
    url: str  # credentials redacted: for display
    created: bool  # False: an existing webhook of that name was updated


def register_webhook(client: Any, name: str, url: str, secret: str) -> Registered:
    """Create the webhook ``name`` on the tracking server, or point the existing one at ``url`` (idempotent:
    a restarted server re-registers without piling up webhooks)."""
    existing, token = None, None
    while existing is None:
        page = client.list_webhooks(max_results=100, page_token=token)
        existing = next((w for w in page if w.name == name), None)
        token = page.token
        if not token:
            break
    events = list(ALIAS_EVENTS)
    if existing is None:
        made = client.create_webhook(name=name, url=url, events=events, secret=secret, status="ACTIVE")
        return Registered(made.webhook_id, name, redact(url), True)
    client.update_webhook(existing.webhook_id, url=url, events=events, secret=secret, status="ACTIVE")
    return Registered(existing.webhook_id, name, redact(url), False)


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()


def check_delivery(
    secret: str, body: bytes, headers: Mapping[str, str], now: float | None = None
) -> str | None:
    """Why this delivery must be refused, or ``None`` when it is MLflow's, signed with ``secret``."""
    given = headers.get("x-mlflow-signature", "")
    delivery, stamp = headers.get("x-mlflow-delivery-id", ""), headers.get("x-mlflow-timestamp", "")
    if not given or not delivery or not stamp.isdigit():
        return "missing X-MLflow-Signature, X-MLflow-Delivery-Id or X-MLflow-Timestamp"
    if abs((time.time() if now is None else now) - int(stamp)) > TOLERANCE_S:
        return f"X-MLflow-Timestamp is more than {TOLERANCE_S} s away from now"
    expected = signature(secret, delivery, stamp, body)
    if not any(hmac.compare_digest(s.strip(), expected) for s in given.split(" ")):
        return "invalid X-MLflow-Signature"
    return None


def moved_alias(body: bytes) -> tuple[str, str] | None:
    """``(registered model, alias)`` when the delivery reports an alias created or deleted, else None."""
    try:
        event = json.loads(body)
        if f"{event['entity']}.{event['action']}" not in ALIAS_EVENTS:
            return None
        return str(event["data"]["name"]), str(event["data"]["alias"])
    except (ValueError, KeyError, TypeError):
        return None


def ensure_webhook(rt: Any) -> Registered | None:
    """Register the knowledge base's webhook when ``serving.webhook_url`` is set (``rt``: a Runtime)."""
    serving = rt.kb.serving
    secret = webhook_secret(serving)
    if serving.webhook_url is None or secret is None:
        return None
    if not rt.settings.tracking_uri.startswith(("http://", "https://")):
        raise ConfigError(
            "serving.webhook_url: MLflow sends webhooks only from a tracking server; set "
            "MLFLOW_TRACKING_URI to its http(s):// address (polling serves a database URI)"
        )
    return register_webhook(rt.registry.client, webhook_name(rt.kb.name), serving.webhook_url, secret)
