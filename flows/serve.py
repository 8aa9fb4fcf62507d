"""`instill serve`: an OpenAI-compatible API and a page over the knowledge base's production adapters.

- ``GET /v1/models``: the knowledge base (``model`` = its name: routed, answered with the serving strategy)
  and each document's production model (``model`` = the registered model name: that adapter alone).
- ``POST /v1/chat/completions``: OpenAI's chat request; ``stream: true`` answers with server-sent events
  (``chat.completion.chunk`` objects, then ``data: [DONE]``). Every response carries ``instill``: the
  strategy and the adapters (document, model, version, sha256) that answered.
- ``POST /hooks/mlflow``: the MLflow registry webhook (``model_version_alias.created`` / ``.deleted``);
  with ``serving.webhook_secret_env`` set, the ``X-MLflow-Signature`` HMAC and the timestamp are checked
  (tasks.webhook), a bad delivery gets 401. A move of the served alias makes the next request re-read the
  aliases; without webhooks the aliases are polled every ``serving.poll_seconds``.
- ``GET /``: documents, production versions, QA metrics, the last refresh and release, and a question box
  (``/?q=...`` renders an answer server-side).

Bad requests get OpenAI's error shape ``{"error": {"message", "type", "param", "code"}}``, never a 500.
"""

from __future__ import annotations

import html
import json
import logging
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tasks.answer import Answerer, AnswerError, Plan
from tasks.webhook import check_delivery, moved_alias, webhook_secret

MAX_BODY_BYTES = 1 << 20
log = logging.getLogger(__name__)


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str = Field(pattern=r"^(system|user|assistant|developer|tool)$")
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI's other fields (n, user, seed, ...) are accepted
    model: str
    messages: list[Message]
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)


def error(status: int, message: str, *, type_: str = "invalid_request_error", param=None, code=None):
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def create_app(answerer: Answerer) -> FastAPI:
    app = FastAPI(title=f"instill: {answerer.name}", docs_url=None, redoc_url=None)
    secret = webhook_secret(answerer.serving)  # read once; a named but unset variable stops the start
    app.state.webhook_calls = app.state.webhook_rereads = 0

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error(exc.status_code, str(exc.detail), code=code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return error(400, str(exc.errors()[:1]), code="invalid_request")

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        return error(500, f"internal error: {type(exc).__name__}: {exc}", type_="server_error")

    def models() -> list[dict[str, Any]]:
        docs = answerer.documents()
        kb = {
            "id": answerer.name,
            "object": "model",
            "created": 0,
            "owned_by": "instill",
            "instill": {
                "kind": "knowledge_base",
                "documents": len(docs),
                "strategy": answerer.strategy,
                "router": answerer.router_kind,
                "top_k": answerer.top_k,
            },
        }
        return [kb] + [
            {
                "id": d.model,
                "object": "model",
                "created": 0,
                "owned_by": "instill",
                "instill": {
                    "kind": "document",
                    "document": d.label,
                    "alias": answerer.view.alias,
                    "version": d.version,
                    "adapter_sha256": d.sha256,
                },
            }
            for d in docs
        ]

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": await run_in_threadpool(models)}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str):
        found = next((m for m in await run_in_threadpool(models) if m["id"] == model_id), None)
        if found is None:
            return error(404, f"The model '{model_id}' does not exist", param="model", code="model_not_found")
        return found

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "registry_reads": answerer.view.reads,
            "webhook_calls": app.state.webhook_calls,
            "webhook_rereads": app.state.webhook_rereads,
        }

    @app.post("/hooks/mlflow")
    async def mlflow_webhook(request: Request):
        raw = await request.body()
        refused = check_delivery(secret, raw, request.headers) if secret else None
        if refused:
            log.warning("refused an MLflow webhook delivery: %s", refused)
            return error(401, refused, type_="authentication_error", code="bad_signature")
        app.state.webhook_calls += 1
        moved = moved_alias(raw)
        reread = moved is not None and moved[1] == answerer.view.alias
        if reread:
            answerer.view.invalidate()
            app.state.webhook_rereads += 1
        return {"ok": True, "reread": reread}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return error(413, f"request body over {MAX_BODY_BYTES} bytes", code="request_too_large")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return error(400, f"the request body is not valid JSON: {exc}", code="invalid_json")
        if not isinstance(body, dict):
            return error(400, "the request body must be a JSON object", code="invalid_json")
        try:
            req = ChatRequest.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"])
            return error(400, f"{param}: {first['msg']}", param=param, code="invalid_value")
        if not req.messages:
            return error(
                400, "messages must hold at least one message", param="messages", code="empty_messages"
            )
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        if not question.strip():
            return error(400, "the last user message is empty", param="messages", code="empty_messages")
        try:
            known = await run_in_threadpool(models)
        except Exception as exc:
            return error(
                503, f"registry unavailable: {exc}", type_="server_error", code="registry_unavailable"
            )
        ids = {m["id"] for m in known}
        if req.model not in ids:
            return error(
                404,
                f"The model '{req.model}' does not exist (see /v1/models)",
                param="model",
                code="model_not_found",
            )
        used = await run_in_threadpool(answerer.count_tokens, messages)
        limit = answerer.serving.max_input_tokens
        if used > limit:
            return error(
                400,
                f"the messages hold {used} tokens; this server takes at most {limit}",
                param="messages",
                code="context_length_exceeded",
            )
        docs = None if req.model == answerer.name else [req.model]
        try:
            plan = await run_in_threadpool(answerer.plan, question, docs)
        except AnswerError as exc:
            return error(exc.status, str(exc), code=exc.code)
        max_new = req.max_completion_tokens or req.max_tokens
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        extra = {
            "strategy": plan.strategy,
            "routed": plan.routed,
            "adapters": plan.describe(),
            "instructions": plan.describe_instructions(),
        }
        if req.stream:
            return StreamingResponse(
                _sse(answerer, messages, plan, max_new, req.temperature, cid, created, req.model, extra),
                media_type="text/event-stream",
            )
        finish: dict[str, Any] = {}

        def run() -> str:
            return "".join(answerer.stream(messages, plan, max_new, req.temperature, finish))

        text = await run_in_threadpool(run)
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": req.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text.strip()},
                    "finish_reason": finish.get("reason", "stop"),
                }
            ],
            "usage": _usage(finish),
            "instill": extra,
        }

    @app.get("/", response_class=HTMLResponse)
    async def page(q: str | None = None):
        answer = None
        if q:
            try:
                answer = await run_in_threadpool(answerer.answer, q)
            except AnswerError as exc:
                answer = {"answer": f"error: {exc}", "adapters": [], "strategy": answerer.strategy}
        return HTMLResponse(await run_in_threadpool(_page, answerer, q, answer))

    return app


def _usage(finish: dict[str, Any]) -> dict[str, int]:
    prompt, done = int(finish.get("prompt_tokens", 0)), int(finish.get("tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


async def _sse(answerer, messages, plan: Plan, max_new, temperature, cid, created, model, extra):
    def chunk(delta: dict, reason: str | None = None, **more) -> str:
        data = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
            **more,
        }
        return f"data: {json.dumps(data)}\n\n"

    yield chunk({"role": "assistant", "content": ""}, instill=extra)
    finish: dict[str, Any] = {}
    try:
        async for piece in iterate_in_threadpool(
            answerer.stream(messages, plan, max_new, temperature, finish)
        ):
            if piece:
                yield chunk({"content": piece})
    except Exception as exc:  # the status is sent already: report in the stream, OpenAI-shaped
        err = {"message": f"generation failed: {exc}", "type": "server_error", "param": None, "code": None}
        yield f"data: {json.dumps({'error': err})}\n\n"
    yield chunk({}, finish.get("reason", "stop"), usage=_usage(finish))
    yield "data: [DONE]\n\n"


def _kb_facts(answerer: Answerer) -> dict[str, Any]:
    """The last refresh and the last release, for the page."""
    from sqlalchemy import select

    from tasks.catalog.models import RefreshRun
    from tasks.release import release_model

    facts: dict[str, Any] = {"refresh": None, "release": None}
    rt = answerer.rt
    with rt.sessions() as session:
        run = session.scalar(select(RefreshRun).order_by(RefreshRun.id.desc()).limit(1))
        if run is not None:
            when = run.finished_at or run.started_at
            facts["refresh"] = f"{run.status.value} at {when:%Y-%m-%d %H:%M:%S} UTC, {run.counts}"
    try:
        versions = sorted(rt.registry.versions(release_model(rt.kb.name)), key=int)
        if versions:
            facts["release"] = f"release {versions[-1]} ({len(versions)} in all)"
    except Exception:
        pass
    return facts


def _page(answerer: Answerer, q: str | None, answer: dict | None) -> str:
    e = html.escape
    docs = answerer.documents()
    facts = _kb_facts(answerer)
    rows = "".join(
        f"<tr><td>{e(d.label)}</td><td><code>{e(d.model)}</code></td><td>v{e(d.version)}</td>"
        f"<td><code>{e(d.sha256[:12])}</code></td><td>"
        + ", ".join(
            f"{e(k)}={v:.3g}" if isinstance(v, float) else f"{e(k)}=-" for k, v in sorted(d.qa.items())
        )
        + ("" if d.qa else "(not measured)")
        + "</td></tr>"
        for d in docs
    )
    shown = ""
    if answer is not None:
        used = ", ".join(f"{a['document']} v{a['version']}" for a in answer["adapters"])
        shown = (
            f"<p><b>Q:</b> {e(q or '')}</p><p><b>A:</b> {e(answer['answer'])}</p>"
            f"<p class=dim>strategy {e(answer['strategy'])}; documents: {e(used)}</p>"
        )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>instill: {e(answerer.name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}.dim{{color:#666}}
#answer{{white-space:pre-wrap;background:#f4f4f4;padding:1em;min-height:2em}}</style></head><body>
<h1>Knowledge base <code>{e(answerer.name)}</code></h1>
<p>{len(docs)} documents in {e(answerer.view.alias)}; strategy <b>{e(answerer.strategy)}</b>
(router {e(answerer.router_kind)}, top-{answerer.top_k}).<br>
Last refresh: {e(str(facts["refresh"]))}<br>Last release: {e(str(facts["release"]))}</p>
<table><tr><th>document</th><th>model</th><th>production</th><th>adapter sha256</th><th>QA metrics</th></tr>
{rows}</table>
<h2>Ask</h2>
<form method="get" action="/" id="ask"><textarea name="q" rows="3" cols="80">{e(q or "")}</textarea><br>
<button type="submit">Ask</button></form>
<div id="answer">{shown}</div>
<script>
document.getElementById('ask').addEventListener('submit', async (ev) => {{
  ev.preventDefault();
  const q = ev.target.q.value, out = document.getElementById('answer');
  out.textContent = '';
  const body = {{model: {json.dumps(answerer.name)}, stream: true, messages: [{{role: 'user', content: q}}]}};
  const r = await fetch('/v1/chat/completions',
    {{method: 'POST', headers: {{'Content-Type': 'application/json'}}, body: JSON.stringify(body)}});
  const reader = r.body.getReader(), dec = new TextDecoder(); let buf = '';
  for (;;) {{
    const {{done, value}} = await reader.read(); if (done) break;
    buf += dec.decode(value, {{stream: true}});
    const parts = buf.split('\\n\\n'); buf = parts.pop();
    for (const p of parts) {{
      const data = p.replace(/^data: /, ''); if (data === '[DONE]') continue;
      const c = JSON.parse(data); if (c.error) {{ out.textContent += c.error.message; continue; }}
      if (c.instill) out.dataset.docs = c.instill.adapters.map(a => a.document + ' v' + a.version).join(', ');
      out.textContent += c.choices[0].delta.content || '';
    }}
  }}
  out.textContent += '\\n(' + (out.dataset.docs || '') + ')';
}});
</script></body></html>"""
