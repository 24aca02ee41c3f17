"""An OpenAI-compatible server over :class:`~pysteer.serving.continuous.SteeredEngine`.

A thin FastAPI app: ``/v1/chat/completions`` and ``/v1/completions`` (streaming or not),
``/v1/models``, and ``/v1/steering`` to list, add (``POST {"name", "path"}``) and remove
(``DELETE /v1/steering/NAME``) specs while it runs. A request picks its steering with the
extra body field ``steering``: a spec name, or ``{"spec": NAME, "row": INT, "scale": NUMBER}``
(with the ``openai`` client: ``extra_body={"steering": {...}}``); none means unsteered.

Why not ``transformers serve``: its handlers own model loading, validate bodies against fixed
TypedDicts and create their own continuous-batching manager, so per-request steering would
mean overriding private methods; this app is ~300 lines over the same engine instead.

Every request is checked before it reaches the engine — malformed JSON, wrong types, an
unknown spec, a row out of range, a non-finite scale, a prompt or ``max_tokens`` beyond the
limits — and refused with a 4xx and an OpenAI-style error body; nothing of it is queued, so
requests in flight are untouched. Decoding is greedy (the engine's generation config);
sampling fields are accepted and ignored. Shutdown (SIGINT/SIGTERM) stops accepting
connections, lets the requests in flight finish, then stops the engine.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..errors import PysteerError, SteeringSpecError
from ..spec import SteeringSpec
from .continuous import SteeredEngine, SteeringRequestError

__all__ = ["ServerLimits", "build_app"]


@dataclass
class ServerLimits:
    """What one request may ask for: new tokens (default and cap) and prompt tokens."""

    default_max_tokens: int = 64
    max_tokens: int = 1024
    max_prompt_tokens: int = 4096


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, param: Optional[str] = None) -> None:
        super().__init__(message)
        self.status, self.param = status, param


def error_response(message: str, status: int, param: Optional[str] = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}},
                        status_code=status)


def build_app(engine: SteeredEngine, tokenizer: Any, model_name: str,
              limits: Optional[ServerLimits] = None) -> FastAPI:
    """The app; it starts ``engine`` on startup and drains and stops it on shutdown."""
    limits = limits or ServerLimits()
    counter = itertools.count()
    eos = engine.model.generation_config.eos_token_id
    eos_ids = set([eos] if isinstance(eos, int) else (eos or []))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not engine.manager.is_running():
            engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.stop, True)

    app = FastAPI(title="pysteer serve", lifespan=lifespan)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest) -> JSONResponse:
        return error_response(str(exc), exc.status, exc.param)

    @app.exception_handler(SteeringRequestError)
    async def bad_steering(request: Request, exc: SteeringRequestError) -> JSONResponse:
        return error_response(str(exc), exc.status, "steering")

    @app.exception_handler(PysteerError)
    async def bad_spec(request: Request, exc: PysteerError) -> JSONResponse:
        return error_response(str(exc), 400, "steering")

    async def body_of(request: Request) -> dict:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        return body

    def max_tokens_of(body: dict) -> int:
        value = body.get("max_completion_tokens", body.get("max_tokens"))
        if value is None:
            return limits.default_max_tokens
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limits.max_tokens:
            raise BadRequest(f"max_tokens must be an integer in 1..{limits.max_tokens}, got {value!r}",
                             param="max_tokens")
        return value

    def check_prompt(ids: list) -> list:
        if not ids:
            raise BadRequest("the prompt is empty", param="prompt")
        if len(ids) > limits.max_prompt_tokens:
            raise BadRequest(f"the prompt has {len(ids)} tokens; the limit is {limits.max_prompt_tokens}",
                             param="prompt")
        vocab = len(tokenizer)
        if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab for t in ids):
            raise BadRequest(f"prompt token ids must be integers in 0..{vocab - 1}", param="prompt")
        return ids

    def chat_ids(body: dict) -> list:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty list", param="messages")
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise BadRequest("each message must be {\"role\": str, \"content\": str}", param="messages")
        text = tokenizer.apply_chat_template([{"role": m["role"], "content": m["content"]} for m in messages],
                                             tokenize=False, add_generation_prompt=True)
        return check_prompt(tokenizer(text, add_special_tokens=False)["input_ids"])

    def completion_ids(body: dict) -> list:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, str):
            return check_prompt(tokenizer(prompt)["input_ids"])
        if isinstance(prompt, list):
            return check_prompt(prompt)
        raise BadRequest("prompt must be a string or a list of token ids (one prompt per request)", param="prompt")

    def text_of(tokens: list) -> str:
        return tokenizer.decode([t for t in tokens if t not in eos_ids], skip_special_tokens=True)

    async def run(body: dict, ids: list, chat: bool) -> Any:
        """Submit (checked first), then answer with one JSON or an SSE stream."""
        max_tokens, stream = max_tokens_of(body), bool(body.get("stream", False))
        request_id = f"{'chatcmpl' if chat else 'cmpl'}-{next(counter)}"
        queue: asyncio.Queue = asyncio.Queue()  # filled on this loop by the engine's output router
        engine.manager.register_result_handler(request_id, queue.put_nowait)
        try:
            engine.submit(ids, body.get("steering"), max_new_tokens=max_tokens, streaming=stream,
                          request_id=request_id)
        except BaseException:
            with engine.manager.output_router._lock:
                engine.manager.output_router.result_handlers.pop(request_id, None)
            raise
        created = int(time.time())
        if not stream:
            result = await queue.get()
            if result.error is not None:
                return error_response(f"generation failed: {result.error}", 500)
            return JSONResponse(completion_json(request_id, created, chat, text_of(result.generated_tokens),
                                                len(ids), result.generated_tokens, max_tokens))
        return StreamingResponse(stream_events(request_id, created, chat, queue, max_tokens),
                                 media_type="text/event-stream")

    def finish_reason(tokens: list, max_tokens: int) -> str:
        return "stop" if tokens and tokens[-1] in eos_ids and len(tokens) <= max_tokens else "length"

    def completion_json(request_id: str, created: int, chat: bool, text: str, n_prompt: int, tokens: list,
                        max_tokens: int) -> dict:
        reason = finish_reason(tokens, max_tokens)
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
                  if chat else {"index": 0, "text": text, "finish_reason": reason, "logprobs": None})
        return {"id": request_id, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": model_name, "choices": [choice],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": len(tokens),
                          "total_tokens": n_prompt + len(tokens)}}

    async def stream_events(request_id: str, created: int, chat: bool, queue: asyncio.Queue,
                            max_tokens: int) -> AsyncIterator[str]:
        kind = "chat.completion.chunk" if chat else "text_completion"
        sent, finished = "", False

        def chunk(delta: str, reason: Optional[str], first: bool = False) -> str:
            if chat:
                piece = {"role": "assistant", "content": delta} if first else {"content": delta}
                choice = {"index": 0, "delta": piece, "finish_reason": reason}
            else:
                choice = {"index": 0, "text": delta, "finish_reason": reason, "logprobs": None}
            return "data: " + json.dumps({"id": request_id, "object": kind, "created": created,
                                          "model": model_name, "choices": [choice]}) + "\n\n"
        try:
            if chat:
                yield chunk("", None, first=True)
            while not finished:
                result = await queue.get()
                finished = result.is_finished()
                if result.error is not None:
                    yield "data: " + json.dumps({"error": {"message": f"generation failed: {result.error}",
                                                           "type": "server_error"}}) + "\n\n"
                    return
                text = text_of(result.generated_tokens)
                # Decode the whole response each time: a token may complete a multi-byte character.
                if text.startswith(sent) and (len(text) > len(sent) or finished):
                    delta, sent = text[len(sent):], text
                    reason = finish_reason(result.generated_tokens, max_tokens) if finished else None
                    if delta or reason:
                        yield chunk(delta, reason)
            yield "data: [DONE]\n\n"
        finally:
            if not finished:  # the client went away: free its slot in the engine
                engine.manager.cancel_request(request_id)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = await body_of(request)
        return await run(body, chat_ids(body), chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await body_of(request)
        return await run(body, completion_ids(body), chat=False)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "pysteer"}]}

    @app.get("/v1/steering")
    async def list_specs() -> dict:
        return {"specs": engine.steering.specs()}

    @app.post("/v1/steering")
    async def add_spec(request: Request) -> Any:
        body = await body_of(request)
        name, path = body.get("name"), body.get("path")
        if not isinstance(name, str) or not name or not isinstance(path, str):
            raise BadRequest("add a spec with {\"name\": NAME, \"path\": SPEC_DIRECTORY}")
        try:
            spec = await asyncio.to_thread(SteeringSpec.load, path)
        except (OSError, SteeringSpecError, ValueError) as exc:
            raise BadRequest(f"cannot load the spec at {path!r}: {exc}", param="path") from None
        digest = engine.steering.add_spec(name, spec)
        return {"name": name, "digest": digest}

    @app.delete("/v1/steering/{name}")
    async def remove_spec(name: str) -> dict:
        engine.steering.remove_spec(name)
        return {"removed": name}

    return app
