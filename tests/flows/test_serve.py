"""`instill serve` as a real process, driven by the official `openai` client: models, chat, streaming,
OpenAI-shaped errors, and an alias move followed without a restart."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.fixtures.serving import served_kb, served_kb_session, server  # noqa: F401


@pytest.fixture
def client(server):  # noqa: F811
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_list_the_knowledge_base_and_each_production_document(client):
    models = {m.id: m for m in client.models.list().data}
    assert "servedkb" in models
    docs = {m.model_extra["instill"]["document"]: m for m in models.values() if m.id != "servedkb"}
    assert set(docs) == {"docs:alpha.md", "docs:beta.txt", "docs:gamma.html"}
    assert docs["docs:beta.txt"].model_extra["instill"]["version"] == "2"


def test_chat_routed_and_named_with_and_without_streaming(client):
    reply = client.chat.completions.create(
        model="servedkb", messages=[{"role": "user", "content": "Where is Gamma tea grown?"}], max_tokens=4
    )
    assert reply.object == "chat.completion" and reply.choices[0].finish_reason in ("stop", "length")
    assert reply.model_extra["instill"]["adapters"][0]["document"] == "docs:gamma.html"
    assert reply.usage.completion_tokens <= 4

    beta = next(m.id for m in client.models.list().data if m.id.endswith("-2"))
    stream = client.chat.completions.create(
        model=beta, messages=[{"role": "user", "content": "Who leads the crew?"}], max_tokens=5, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].model_extra["instill"]["adapters"][0]["model"] == beta
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert isinstance(text, str) and len(chunks) >= 3


def test_bad_requests_get_openai_shaped_errors(client, server):  # noqa: F811
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="servedkb", messages=[])
    assert err.value.body["code"] == "empty_messages"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="servedkb", messages=[{"role": "user", "content": "tea " * 400}])
    assert err.value.body["code"] == "context_length_exceeded"
    raw = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=b'{"model": "servedkb", "messages": [',
        headers={"Content-Type": "application/json"},
    )
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "invalid_json"
    raw = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "servedkb", "messages": "hi"})
    assert raw.status_code == 400 and raw.json()["error"]["param"] == "messages"
    assert httpx.get(f"{server.url}/v1/nothing").json()["error"]["code"] == "not_found"


def test_an_alias_move_is_followed_without_restart(client, served_kb):  # noqa: F811
    from tasks.lifecycle import promote, rollback

    def beta_version() -> str:
        reply = client.chat.completions.create(
            model="servedkb",
            messages=[{"role": "user", "content": "Beta robots serviced Tuesday crew?"}],
            max_tokens=1,
        )
        return reply.model_extra["instill"]["adapters"][0]["version"]

    assert beta_version() == "2"
    rollback(str(served_kb.config), "docs:beta.txt", reason="test: back to v1")
    try:
        deadline = time.monotonic() + 15
        while beta_version() != "1":  # polled every 0.5 s by the server
            assert time.monotonic() < deadline, "the server kept the old adapter"
            time.sleep(0.3)
        assert {m.id: m for m in client.models.list().data}[
            next(m.id for m in client.models.list().data if m.id.endswith("-2"))
        ].model_extra["instill"]["version"] == "1"
    finally:
        promote(str(served_kb.config), "docs:beta.txt", version="2", reason="test: forward again")
    deadline = time.monotonic() + 15
    while beta_version() != "2":
        assert time.monotonic() < deadline
        time.sleep(0.3)


def test_the_page_renders_documents_and_an_answer_in_headless_chromium(server, tmp_path):  # noqa: F811
    import shutil
    import subprocess
    import urllib.parse

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    url = f"{server.url}/?q=" + urllib.parse.quote("Where is Gamma tea grown?")
    flags = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1100,700",
    ]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=90).stdout
    for label in ("docs:alpha.md", "docs:beta.txt", "docs:gamma.html", "Last refresh: succeeded"):
        assert label in dom
    assert "<b>A:</b>" in dom and "documents: docs:gamma.html" in dom
    png = tmp_path / "page.png"
    subprocess.run([*flags, f"--screenshot={png}", url], capture_output=True, timeout=90, check=True)
    from PIL import Image

    image = Image.open(png).convert("L")
    assert image.size == (1100, 700)
    # Text was drawn: a blank or error page is (nearly) one colour.
    assert len(set(image.getdata())) > 20 and image.getextrema()[0] < 80
    shutil.copy(png, server.log.parent / "page.png")
