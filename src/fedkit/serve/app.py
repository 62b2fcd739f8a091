"""The inference endpoint: a FastAPI app over a bundle, with micro-batching and Prometheus metrics.

Routes:

- ``POST /v1/predict`` with a JSON body ``{"text": "...", "k": 3}`` (``k`` optional, default 3,
  in ``1..max_k``). A next-word bundle answers ``{"task": "next_word", "predictions": [{"word":
  ..., "probability": ...}, ...]}`` (``k`` words, most likely first); a classifier answers
  ``{"task": "classify", "label": ..., "probabilities": {label: p, ...}}``.
- ``GET /healthz``: ``{"status": "ok", ...}`` once the model is loaded.
- ``GET /metrics``: Prometheus text: ``fedkit_serve_requests_total{route,code}``,
  ``fedkit_serve_request_seconds{route}`` (latency histogram), ``fedkit_serve_batch_size``
  (histogram of model-call batch sizes) and ``fedkit_serve_queue_depth``.

Every input is checked before it reaches the model, each failure answered with a JSON
``{"error": ...}`` saying what was wrong: a body over ``max_body_bytes`` (413), not UTF-8 (400),
not a JSON object (400), ``text`` missing, not a string, or over ``max_chars`` characters (422),
``k`` not an integer in ``1..max_k`` (422), unknown fields (422). A full queue answers 503 with
``Retry-After``. Shutting down (uvicorn on SIGINT/SIGTERM) stops accepting connections, lets
requests in flight finish, then drains the batcher (:meth:`MicroBatcher.close`).

``/v1/predict`` is served by a plain ASGI handler in front of the FastAPI app (which keeps
``/healthz``, ``/metrics``, the lifespan and every other path): it reads the body from the ASGI
``receive`` channel and writes the JSON answer as two ASGI messages. FastAPI's request
machinery (routing, dependency solving, exit stacks, its middleware stack) cost more server
CPU per request than the batched model call itself (py-spy: about 70% of the event loop's
busy samples under load), and batching shares only the model call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fedkit.serve.batching import BatchSettings, MicroBatcher, Overloaded
from fedkit.serve.predictor import ClassPrediction, NextWords, Prediction, Predictor

__all__ = ["Limits", "create_app"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Limits:
    """Input limits of ``/v1/predict``.

    Attributes:
        max_body_bytes: largest request body.
        max_chars: longest ``text``.
        max_k: largest ``k``.
        retry_after: seconds a 503 asks the client to wait.
    """

    max_body_bytes: int = 16_384
    max_chars: int = 2_000
    max_k: int = 20
    retry_after: int = 1

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_chars", "max_k", "retry_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: must be an int >= 1")


class _BadInput(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class _Query:
    text: str
    k: int


def _parse(body: bytes, limits: Limits) -> _Query:
    if len(body) > limits.max_body_bytes:
        raise _BadInput(
            413, f"request body is {len(body)} bytes; the limit is {limits.max_body_bytes}"
        )
    try:
        decoded = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _BadInput(400, f"request body is not UTF-8 ({e.reason} at byte {e.start})") from e
    try:
        doc = json.loads(decoded)
    except json.JSONDecodeError as e:
        raise _BadInput(400, f"request body is not JSON ({e.msg} at character {e.pos})") from e
    if not isinstance(doc, dict):
        raise _BadInput(400, 'request body must be a JSON object: {"text": "...", "k": 3}')
    unknown = sorted(set(doc) - {"text", "k"})
    if unknown:
        raise _BadInput(422, f"unknown field(s) {unknown}; allowed: 'text', 'k'")
    text = doc.get("text")
    if not isinstance(text, str):
        raise _BadInput(422, "'text' is required and must be a string")
    if len(text) > limits.max_chars:
        raise _BadInput(422, f"'text' has {len(text)} characters; the limit is {limits.max_chars}")
    k = doc.get("k", 3)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limits.max_k:
        raise _BadInput(422, f"'k' must be an integer in 1..{limits.max_k}, got {k!r}")
    return _Query(text, k)


def _answer(pred: Prediction) -> dict[str, Any]:
    if isinstance(pred, NextWords):
        return {
            "task": "next_word",
            "predictions": [
                {"word": w, "probability": p}
                for w, p in zip(pred.words, pred.probabilities, strict=True)
            ],
        }
    assert isinstance(pred, ClassPrediction)
    best = max(range(len(pred.labels)), key=pred.probabilities.__getitem__)
    return {
        "task": "classify",
        "label": pred.labels[best],
        "probabilities": dict(zip(pred.labels, pred.probabilities, strict=True)),
    }


async def _send_json(
    send: Send, status: int, doc: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Answer ``doc`` as JSON (UTF-8, compact, as Starlette's ``JSONResponse`` writes it)."""
    data = json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


class _ClientGone(Exception):
    """The client disconnected before its request body arrived."""


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, read up to just over ``limit`` bytes (413 when the declared length is
    already over it)."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise _BadInput(413, f"request body is {int(value)} bytes; the limit is {limit}")
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        body += message.get("body", b"")
        if len(body) > limit or not message.get("more_body", False):
            return bytes(body)  # stop reading once over the limit: _parse answers 413


class _Predict:
    """``POST /v1/predict`` as a plain ASGI handler (see the module docstring)."""

    def __init__(self, batcher: MicroBatcher[_Query, Prediction], limits: Limits) -> None:
        self.batcher, self.limits = batcher, limits
        self.retry_after = [(b"retry-after", str(limits.retry_after).encode())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            error = {"error": f"{scope['method']} is not allowed here; use POST"}
            await _send_json(send, 405, error, [(b"allow", b"POST")])
            return
        try:
            query = _parse(
                await _read_body(scope, receive, self.limits.max_body_bytes), self.limits
            )
        except _BadInput as e:
            await _send_json(send, e.status, {"error": str(e)})
            return
        except _ClientGone:
            return
        try:
            pred = await self.batcher.submit(query)
        except Overloaded as e:
            await _send_json(send, 503, {"error": f"{e}; retry later"}, self.retry_after)
            return
        except Exception as e:  # the model failed on this request's batch
            await _send_json(send, 500, {"error": f"prediction failed ({type(e).__name__})"})
            return
        await _send_json(send, 200, _answer(pred))


def create_app(
    predictor: Predictor, *, batching: BatchSettings | None = None, limits: Limits | None = None
) -> ASGIApp:
    """The ASGI app serving ``predictor`` (see the module docstring)."""
    batching = batching or BatchSettings()
    limits = limits or Limits()
    registry = CollectorRegistry()
    requests = Counter(
        "fedkit_serve_requests",
        "HTTP requests by route and status code",
        ["route", "code"],
        registry=registry,
    )
    latency = Histogram(
        "fedkit_serve_request_seconds",
        "Request latency in seconds",
        ["route"],
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        registry=registry,
    )
    batch_sizes = Histogram(
        "fedkit_serve_batch_size",
        "Requests per model call",
        buckets=tuple(float(2**i) for i in range(13)),
        registry=registry,
    )
    depth = Gauge("fedkit_serve_queue_depth", "Requests waiting", registry=registry)

    def run_batch(queries: Sequence[_Query]) -> list[Prediction]:
        return predictor.predict([q.text for q in queries], [q.k for q in queries])

    batcher: MicroBatcher[_Query, Prediction] = MicroBatcher(
        run_batch,
        batching,
        on_batch=batch_sizes.observe,
    )
    depth.set_function(lambda: batcher.depth)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.close()  # after uvicorn has let in-flight requests finish

    app = FastAPI(title="fedkit serve", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        spec = predictor.bundle.spec
        return {
            "status": "ok",
            "model": spec.name,
            "task": predictor.task,
            "max_batch": batching.max_batch,
            "max_queue": batching.max_queue,
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return _Measure(app, _Predict(batcher, limits), requests=requests, latency=latency)


_ROUTES = frozenset({"/v1/predict", "/healthz", "/metrics"})


class _Measure:
    """The outermost ASGI app: sends ``/v1/predict`` to ``predict`` and every other scope to
    ``app``, and counts and times every HTTP request by route and status code (a plain ASGI
    wrapper: Starlette's ``BaseHTTPMiddleware`` costs more than the model call of a small
    request)."""

    def __init__(
        self, app: ASGIApp, predict: ASGIApp, *, requests: Counter, latency: Histogram
    ) -> None:
        self.app, self.predict, self.requests, self.latency = app, predict, requests, latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = path if path in _ROUTES else "other"
        t0 = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await (self.predict if path == "/v1/predict" else self.app)(scope, receive, send_status)
        finally:
            self.latency.labels(route).observe(time.perf_counter() - t0)
            self.requests.labels(route, str(status)).inc()
