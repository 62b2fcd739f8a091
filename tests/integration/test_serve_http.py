"""``fedkit serve`` as a real process on loopback, called with a real HTTP client (httpx)."""

from __future__ import annotations

import asyncio
import math
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fedkit.serve.loadtest import run_level
from tests.helpers.serve import LOGITS, constant_bundle, serving

pytestmark = pytest.mark.net

# softmax of LOGITS over all 9 ids: Z = e^5 + e^3 + e^2 + e^1 + 5·e^0
#   = 148.4132 + 20.0855 + 7.3891 + 2.7183 + 5 = 183.6061
# cat (logit 3): 20.0855 / 183.6061 = 0.10940; sat (2): 0.040244; mat (1): 0.014805.
# oov has logit 5 (p 0.8083) but is a special id: never suggested.
Z = sum(math.exp(v) for v in LOGITS)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    bundle = constant_bundle(tmp_path_factory.mktemp("serve") / "bundle")
    # a queue of one and no batching: a burst of requests must overflow it
    with serving(bundle, "--max-queue", "1", "--max-batch", "1", "--max-wait-ms", "0") as (url, _):
        yield url


def test_known_top_k_for_a_known_input(server: str) -> None:
    r = httpx.post(f"{server}/v1/predict", json={"text": "the cat", "k": 3})
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert [p["word"] for p in preds] == ["cat", "sat", "mat"]
    assert preds[0]["probability"] == pytest.approx(0.10940, abs=1e-5)
    assert preds[1]["probability"] == pytest.approx(0.040244, abs=1e-6)
    assert preds[2]["probability"] == pytest.approx(math.exp(1) / Z, rel=1e-6)
    one = httpx.post(f"{server}/v1/predict", json={"text": "on the"}).json()["predictions"]
    assert len(one) == 3  # k defaults to 3


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b'{"text": "a", "k": 0}', 422, "'k' must be an integer in 1..20"),
        (b'{"text": "a", "k": 21}', 422, "'k' must be an integer in 1..20"),
        (b'{"text": "a", "k": true}', 422, "'k' must be an integer"),
        (b'{"text": "a", "k": "3"}', 422, "'k' must be an integer"),
        (b'{"k": 3}', 422, "'text' is required"),
        (b'{"text": 5}', 422, "'text' is required and must be a string"),
        (b'{"text": "a", "extra": 1}', 422, "unknown field(s) ['extra']"),
        (b'{"text": "' + b"x" * 2001 + b'"}', 422, "2001 characters; the limit is 2000"),
        (b'{"text": "' + b"x" * 17000 + b'"}', 413, "the limit is 16384"),
        (b'{"text": "caf\xe9"}', 400, "not UTF-8"),
        (b"{not json", 400, "not JSON"),
        (b'["text"]', 400, "must be a JSON object"),
    ],
)
def test_bad_input_gets_a_4xx_that_says_what(
    server: str, body: bytes, status: int, message: str
) -> None:
    r = httpx.post(
        f"{server}/v1/predict", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == status
    assert message in r.json()["error"]


def test_predict_answers_post_only(server: str) -> None:
    r = httpx.get(f"{server}/v1/predict")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert "use POST" in r.json()["error"]
    assert httpx.get(f"{server}/nowhere").status_code == 404  # other paths: the FastAPI app


def _count(metrics: str, route: str, code: str) -> float:
    m = re.search(
        rf'fedkit_serve_requests_total{{code="{code}",route="{re.escape(route)}"}} (\S+)', metrics
    )
    return 0.0 if m is None else float(m.group(1))


def test_a_burst_over_a_tiny_queue_gets_503_with_retry_after_and_metrics_count_it(
    server: str,
) -> None:
    before = httpx.get(f"{server}/metrics").text

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as c:
            return await asyncio.gather(
                *(c.post(f"{server}/v1/predict", json={"text": "the", "k": 1}) for _ in range(48))
            )

    answers = asyncio.run(burst())
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 503}
    assert codes.count(503) >= 1 and codes.count(200) >= 1
    for r in answers:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1" and "queue is full" in r.json()["error"]
        else:
            assert r.json()["predictions"][0]["word"] == "cat"
    after = httpx.get(f"{server}/metrics").text
    route = "/v1/predict"
    assert _count(after, route, "503") - _count(before, route, "503") == codes.count(503)
    assert _count(after, route, "200") - _count(before, route, "200") == codes.count(200)
    # no batching: every model call held exactly one request
    calls = float(re.search(r"fedkit_serve_batch_size_count (\S+)", after).group(1))  # type: ignore[union-attr]
    ones = float(re.search(r'fedkit_serve_batch_size_bucket{le="1.0"} (\S+)', after).group(1))  # type: ignore[union-attr]
    assert calls == ones >= codes.count(200)
    assert "fedkit_serve_request_seconds_bucket" in after


def test_the_load_generator_measures_the_live_server(server: str) -> None:
    # one closed-loop client never has two requests waiting: a queue of one never overflows.
    # No warm-up: the first request is counted however long a loaded machine takes to answer.
    r = asyncio.run(run_level(f"{server}/v1/predict", 1, duration=0.5, warmup=0.0))
    assert r.ok > 0 and r.failed == 0 and r.rejected == 0
    assert 0.0 < r.p50 <= r.p95 <= r.p99
    assert r.throughput == pytest.approx(r.ok / r.seconds)


@pytest.mark.slow  # two more server starts (seconds on a loaded machine)
def test_compare_loads_every_arm_at_every_level(tmp_path: Path) -> None:
    from fedkit.serve.loadtest import compare

    bundle = constant_bundle(tmp_path / "b")
    arms = {"unbatched": ["--max-batch", "1", "--threads", "1"], "batched": ["--threads", "1"]}
    runs = compare(bundle, arms, [1, 4], duration=0.4, warmup=0.1)
    assert list(runs) == ["unbatched", "batched"]
    for results in runs.values():
        assert [r.concurrency for r in results] == [1, 4]
        assert all(r.ok > 0 and r.failed == 0 and r.server_cpu > 0 for r in results)
    assert all(r.mean_batch == 1.0 for r in runs["unbatched"])  # every call held one request
    assert runs["batched"][1].mean_batch >= 1.0


@pytest.mark.slow  # a second server start (seconds on a loaded machine)
def test_sigterm_finishes_in_flight_requests_and_exits_cleanly(tmp_path: Path) -> None:
    bundle = constant_bundle(tmp_path / "b", window=256, hidden=128)  # ~ tens of ms a call
    with serving(bundle, "--max-batch", "4") as (url, proc):

        async def in_flight() -> list[int]:
            async with httpx.AsyncClient(timeout=30) as c:
                tasks = [
                    asyncio.create_task(c.post(f"{url}/v1/predict", json={"text": "the"}))
                    for _ in range(8)
                ]
                await asyncio.sleep(0.05)  # the requests are sent and queued
                proc.send_signal(signal.SIGTERM)
                return [r.status_code for r in await asyncio.gather(*tasks)]

        codes = asyncio.run(in_flight())
        assert proc.wait(30) == 0
    assert codes == [200] * 8
