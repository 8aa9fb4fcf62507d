"""The MLflow registry webhook, end to end: a real `mlflow server` (SQLite backend), `instill serve` as a
real process that registers its webhook there at start and polls once an hour, an alias moved through the
tracking server by instill's own rollback / promote, and the next request answered with the other adapter
without a restart: only the signed webhook delivery can explain the switch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import httpx
import openai
import pytest
import yaml

from tasks.runtime import forget_runtimes
from tasks.webhook import signature, webhook_name
from tests.fixtures.serving import (  # noqa: F401
    REPO,
    free_port,
    served_kb,
    served_kb_session,
    start_server,
    stop_server,
    tracking_server,
)

SECRET_ENV = "INSTILL_TEST_WEBHOOK_SECRET"


def webhook_config(kb, port: int, tmp_path) -> tuple:
    """The shared knowledge base's config with the webhook on and polling at one hour."""
    cfg = yaml.safe_load(kb.config.read_text())
    cfg["serving"].update(
        poll_seconds=3600,
        webhook_url=f"http://127.0.0.1:{port}/hooks/mlflow",
        webhook_secret_env=SECRET_ENV,
    )
    path = kb.config.with_name(f"instill-webhook-{uuid.uuid4().hex[:6]}.yaml")  # beside docs/
    path.write_text(yaml.safe_dump(cfg))
    return path, cfg


def health(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=10).json()


def test_an_alias_move_reaches_the_server_through_the_mlflow_webhook(
    served_kb,  # noqa: F811
    tracking_server,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    from mlflow import MlflowClient

    from tasks.lifecycle import promote, rollback

    secret = uuid.uuid4().hex
    port = free_port()
    config, _ = webhook_config(served_kb, port, tmp_path)
    env = {"MLFLOW_TRACKING_URI": tracking_server.url, SECRET_ENV: secret}
    server = start_server(served_kb, tmp_path / "serve.log", env=env, config=config, port=port)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.url)  # this test's moves go through the server
    monkeypatch.setenv(SECRET_ENV, secret)
    forget_runtimes()
    try:
        hooks = [
            w for w in MlflowClient(tracking_server.url).list_webhooks() if w.name == webhook_name("servedkb")
        ]
        assert len(hooks) == 1 and hooks[0].url == f"http://127.0.0.1:{port}/hooks/mlflow"
        assert {str(e) for e in hooks[0].events} == {
            "model_version_alias.created",
            "model_version_alias.deleted",
        }
        assert "registry webhook instill-servedkb created" in server.log.read_text()
        assert secret not in server.log.read_text()
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)

        def beta_version() -> str:
            reply = client.chat.completions.create(
                model="servedkb",
                messages=[{"role": "user", "content": "Beta robots serviced Tuesday crew?"}],
                max_tokens=1,
            )
            return reply.model_extra["instill"]["adapters"][0]["version"]

        def after_delivery(calls_before: int) -> dict:
            deadline = time.monotonic() + 30  # MLflow delivers from a thread pool, within a second here
            while (now := health(server.url))["webhook_calls"] <= calls_before:
                assert time.monotonic() < deadline, f"no webhook delivery:\n{tracking_server.log.read_text()}"
                time.sleep(0.2)
            return now

        assert beta_version() == "2"
        before = health(server.url)
        assert before["webhook_calls"] == 0
        rollback(str(config), "docs:beta.txt", reason="test: back to v1 through the tracking server")
        assert after_delivery(before["webhook_calls"])["webhook_rereads"] == 1
        assert beta_version() == "1"  # the very next request: polling (1 h) cannot explain it
        assert health(server.url)["registry_reads"] > before["registry_reads"]

        calls = health(server.url)["webhook_calls"]
        promote(str(config), "docs:beta.txt", version="2", reason="test: forward again")
        assert after_delivery(calls)["webhook_rereads"] == 2
        assert beta_version() == "2"
        assert server.process.poll() is None  # one process throughout: no restart
    finally:
        stop_server(server)
        forget_runtimes()


def test_the_receiver_refuses_unsigned_forged_and_replayed_deliveries(
    served_kb,  # noqa: F811
    tracking_server,  # noqa: F811
    tmp_path,
):
    secret = uuid.uuid4().hex
    port = free_port()
    config, _ = webhook_config(served_kb, port, tmp_path)
    env = {"MLFLOW_TRACKING_URI": tracking_server.url, SECRET_ENV: secret}
    server = start_server(served_kb, tmp_path / "serve.log", env=env, config=config, port=port)
    try:
        body = json.dumps(
            {
                "entity": "model_version_alias",
                "action": "created",
                "timestamp": "2026-01-01T00:00:00+00:00",
                "data": {"name": "m", "alias": "production", "version": "1"},
            }
        ).encode()
        hook = f"{server.url}/hooks/mlflow"

        def post(key: str, stamp: int) -> httpx.Response:
            headers = {
                "Content-Type": "application/json",
                "X-MLflow-Delivery-Id": "d-1",
                "X-MLflow-Timestamp": str(stamp),
                "X-MLflow-Signature": signature(key, "d-1", str(stamp), body),
            }
            return httpx.post(hook, content=body, headers=headers, timeout=10)

        unsigned = httpx.post(hook, content=body, timeout=10)
        assert unsigned.status_code == 401 and unsigned.json()["error"]["code"] == "bad_signature"
        assert post("not-the-secret", int(time.time())).status_code == 401
        replayed = post(secret, int(time.time()) - 3600)
        assert replayed.status_code == 401 and "Timestamp" in replayed.json()["error"]["message"]
        assert health(server.url)["webhook_calls"] == 0
        good = post(secret, int(time.time()))
        assert good.status_code == 200 and good.json() == {"ok": True, "reread": True}
        assert health(server.url)["webhook_calls"] == 1 and health(server.url)["webhook_rereads"] == 1
        # MLflow's own test delivery (an example payload, another alias) is accepted and changes nothing.
        from mlflow import MlflowClient

        tracker = MlflowClient(tracking_server.url)
        hook_id = next(w.webhook_id for w in tracker.list_webhooks() if w.name == webhook_name("servedkb"))
        result = tracker.test_webhook(hook_id)
        assert result.success and result.response_status == 200, result
        assert json.loads(result.response_body) == {"ok": True, "reread": False}
        # A restarted server updates its webhook instead of adding one.
        stop_server(server)
        server = start_server(served_kb, tmp_path / "serve2.log", env=env, config=config, port=port)
        assert "registry webhook instill-servedkb updated" in server.log.read_text()
        same = [w for w in tracker.list_webhooks() if w.name == webhook_name("servedkb")]
        assert [w.webhook_id for w in same] == [hook_id]
    finally:
        stop_server(server)


@pytest.mark.parametrize("problem", ["no tracking server", "secret unset"])
def test_a_webhook_setting_that_cannot_work_stops_serve_with_one_line(served_kb, tmp_path, problem):  # noqa: F811
    """A subprocess with a time limit: were the check missing, serve would start and never return."""
    config, _ = webhook_config(served_kb, 8999, tmp_path)
    env = {**os.environ, "INSTILL_HOME": str(served_kb.home), SECRET_ENV: "s3cret-value"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("INSTILL_MLFLOW_TRACKING_URI", None)
    if problem == "secret unset":
        env.update(MLFLOW_TRACKING_URI="http://127.0.0.1:9", **{SECRET_ENV: ""})
    run = subprocess.run(
        [sys.executable, "-m", "flows.cli", "serve", "--config", str(config), "--port", "8999"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 2, output
    expected = {
        "no tracking server": "MLflow sends webhooks only from a tracking server",
        "secret unset": f"environment variable {SECRET_ENV} is not set",
    }[problem]
    assert expected in output and "Traceback" not in output and "s3cret-value" not in output
