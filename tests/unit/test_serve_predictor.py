"""The predictor's input layout and batch invariance, and the micro-batcher's rules."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.models.spec import ModelSpec
from fedkit.params import model_params
from fedkit.serve.batching import BatchSettings, MicroBatcher, Overloaded
from fedkit.serve.bundle import load_bundle, write_bundle
from fedkit.serve.predictor import NextWords, Predictor
from tests.helpers.serve import WORDS, constant_bundle


def _predictor(tmp: Path, *, causal: bool, seed: int = 0) -> Predictor:
    spec = ModelSpec(
        name="nextword_lstm",
        num_classes=len(WORDS) + 4,
        input_shape=(5,),
        options={"embedding_dim": 4, "hidden_size": 6, "bidirectional": not causal},
        init_seed=seed,
    )
    write_bundle(tmp, params=model_params(spec.build()), spec=spec, words=WORDS)
    return Predictor(load_bundle(tmp))


def test_bilstm_reads_a_left_padded_prefix_and_the_causal_lstm_a_right_padded_one(
    tmp_path: Path,
) -> None:
    bi = _predictor(tmp_path / "bi", causal=False)
    causal = _predictor(tmp_path / "causal", causal=True)
    # ids: the 1, cat 2, sat 3, on 4, mat 5, oov 6, bos 7; window 5
    assert bi.encode("The cat SAT on") == [7, 1, 2, 3, 4]
    assert bi.encode("the cat sat on the mat") == [2, 3, 4, 1, 5]  # last 5 of 7
    assert bi.encode("dog") == [7, 6]
    x, last = bi._batch([[7, 6], [7, 1, 2]])
    assert x.tolist() == [[0, 0, 0, 7, 6], [0, 0, 7, 1, 2]] and last.tolist() == [4, 4]
    x, last = causal._batch([[7, 6], [7, 1, 2]])
    assert x.tolist() == [[7, 6, 0, 0, 0], [7, 1, 2, 0, 0]] and last.tolist() == [1, 2]
    assert bi.per_position is False and causal.per_position is True


@settings(max_examples=15, deadline=None)
@given(
    st.lists(
        st.lists(st.sampled_from([*WORDS, "dog", ".", "the"]), max_size=8), min_size=2, max_size=6
    ),
    st.booleans(),
)
def test_a_texts_answer_does_not_depend_on_its_batch(
    tmp_path_factory: pytest.TempPathFactory, texts: list[list[str]], causal: bool
) -> None:
    pred = _predictor(tmp_path_factory.mktemp("p"), causal=causal, seed=1)
    joined = [" ".join(t) for t in texts]
    together = pred.probabilities([pred.encode(t) for t in joined])
    alone = torch.cat([pred.probabilities([pred.encode(t)]) for t in joined])
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=1e-5)


@settings(max_examples=15, deadline=None)
@given(
    st.lists(st.lists(st.sampled_from([*WORDS, "dog"]), max_size=6), min_size=1, max_size=4),
    st.integers(1, 5),
    st.booleans(),
    st.integers(0, 1000),
)
def test_top_k_is_the_full_softmax_without_specials_sorted(
    tmp_path_factory: pytest.TempPathFactory,
    texts: list[list[str]],
    k: int,
    causal: bool,
    seed: int,
) -> None:
    # reference: softmax over all 9 ids, drop pad/oov/bos/eos (0, 6, 7, 8), sort descending
    pred = _predictor(tmp_path_factory.mktemp("p"), causal=causal, seed=seed)
    joined = [" ".join(t) for t in texts]
    full = pred.probabilities([pred.encode(t) for t in joined])
    answers = pred.predict(joined, [k] * len(joined))
    for text, row, got in zip(joined, full.tolist(), answers, strict=True):
        ranked = sorted(((row[i], WORDS[i - 1]) for i in range(1, 6)), reverse=True)[:k]
        assert isinstance(got, NextWords), text
        assert got.words == tuple(w for _, w in ranked)
        assert got.probabilities == pytest.approx([p for p, _ in ranked], rel=1e-5)


def test_specials_are_never_suggested_and_k_is_per_request(tmp_path: Path) -> None:
    pred = Predictor(load_bundle(constant_bundle(tmp_path / "b", window=4, hidden=3)))
    a, b = pred.predict(["the", "cat"], [1, 5])
    assert isinstance(a, NextWords) and isinstance(b, NextWords)
    assert a.words == ("cat",)
    # oov (logit 5) is the likeliest id; the five words follow in logit order, ties by id
    assert b.words == ("cat", "sat", "mat", "the", "on")


def _run(batcher_settings: BatchSettings, n: int) -> tuple[list[int], list[object]]:
    sizes: list[int] = []
    gate = threading.Event()

    def run_batch(items: Sequence[int]) -> list[int]:
        gate.wait(5)  # hold the first batch until every request is queued
        return [i * 10 for i in items]

    async def main() -> list[object]:
        b: MicroBatcher[int, int] = MicroBatcher(run_batch, batcher_settings, on_batch=sizes.append)
        b.start()
        tasks = [asyncio.create_task(b.submit(i)) for i in range(n)]
        await asyncio.sleep(0.05)
        gate.set()
        out = await asyncio.gather(*tasks, return_exceptions=True)
        await b.close()
        with pytest.raises(Overloaded, match="shutting down"):
            await b.submit(0)
        return out

    return sizes, asyncio.run(main())


def test_batches_fill_up_to_max_batch_in_arrival_order() -> None:
    # all 10 are queued before the worker first runs: batches of at most 4 -> 4, 4, 2
    sizes, out = _run(BatchSettings(max_batch=4, max_wait=0.01, max_queue=100), 10)
    assert out == [i * 10 for i in range(10)]
    assert sizes == [4, 4, 2]


def test_a_batch_that_fills_goes_at_once_with_at_most_one_timer_per_batch() -> None:
    # 32 requests arrive one by one while the worker waits to fill batches of 8. The loop's
    # clock stands still, so no timer can ever fire: a batch leaves only because it filled (one
    # that waited for its timer would hang the test), and the waiting must cost at most one
    # timer per batch (the old collector made one per request that arrived while it waited: 14).
    made: list[float] = []
    sizes: list[int] = []

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        real_call_at = loop.call_at

        def call_at(when: float, callback: Any, *args: Any, context: Any = None) -> Any:
            made.append(when)
            return real_call_at(when, callback, *args, context=context)

        loop.call_at = call_at  # type: ignore[method-assign]
        loop.time = lambda: 0.0  # type: ignore[method-assign]
        settings = BatchSettings(max_batch=8, max_wait=1.0, max_queue=100)
        b: MicroBatcher[int, int] = MicroBatcher(
            lambda xs: [x * 10 for x in xs], settings, on_batch=sizes.append
        )
        b.start()
        tasks = []
        for i in range(32):
            tasks.append(asyncio.create_task(b.submit(i)))
            for _ in range(4):  # the worker runs, and waits again, between arrivals
                await asyncio.sleep(0)
        out = await asyncio.gather(*tasks)
        await b.close()
        return out

    assert asyncio.run(main()) == [i * 10 for i in range(32)]
    assert sizes == [8, 8, 8, 8]
    assert len(made) <= len(sizes)


def test_without_max_wait_a_batch_is_what_is_already_queued() -> None:
    # max_wait 0: nothing waits. Requests 0..9 are queued before the worker first runs, so the
    # first batch is 0..3 (max_batch 4), then 4..7, then 8..9: exactly what was waiting.
    sizes, out = _run(BatchSettings(max_batch=4, max_wait=0.0, max_queue=100), 10)
    assert out == [i * 10 for i in range(10)]
    assert sizes == [4, 4, 2]


def test_a_full_queue_refuses_instead_of_growing() -> None:
    # the queue takes requests 0..2 before the worker runs; 3..7 are refused at once
    sizes, out = _run(BatchSettings(max_batch=8, max_wait=0.0, max_queue=3), 8)
    assert out[:3] == [0, 10, 20]
    assert all(isinstance(o, Overloaded) and "queue is full (3)" in str(o) for o in out[3:])
    assert sizes == [3]


@pytest.mark.parametrize(
    "kw", [{"max_batch": 0}, {"max_wait": -1.0}, {"max_queue": 0}, {"max_wait": 2.0}]
)
def test_batch_settings_are_validated(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kw))):
        BatchSettings(**kw)  # type: ignore[arg-type]


def test_serving_imports_no_simulation_network_or_experiment_code() -> None:
    import subprocess
    import sys

    code = (
        "import sys, fedkit.serve.app, fedkit.serve.bundle, fedkit.serve.predictor\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('fedkit.sim', 'fedkit.net', "
        "'fedkit.experiment')))\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_classifier_bundle_answers_class_probabilities(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from fedkit.serve.app import create_app

    spec = ModelSpec(
        name="nextword_lstm",
        num_classes=2,
        input_shape=(5,),
        options={"vocab_size": len(WORDS) + 4, "embedding_dim": 4, "hidden_size": 3},
    )
    params = {k: torch.zeros_like(v) for k, v in model_params(spec.build()).items()}
    params["out.bias"] = torch.tensor([0.0, math.log(3.0)])  # softmax: 1/4, 3/4
    write_bundle(tmp_path / "c", params=params, spec=spec, words=WORDS, labels=["neg", "pos"])
    pred = Predictor(load_bundle(tmp_path / "c"))
    assert pred.task == "classify" and pred.encode("the cat sat on the mat") == [1, 2, 3, 4, 1]
    with TestClient(create_app(pred)) as client:
        r = client.post("/v1/predict", json={"text": "the cat"})
        assert r.status_code == 200
        body = r.json()
        assert body["task"] == "classify" and body["label"] == "pos"
        assert body["probabilities"]["neg"] == pytest.approx(0.25)
        assert body["probabilities"]["pos"] == pytest.approx(0.75)
        assert client.get("/healthz").json()["task"] == "classify"


def test_a_failing_model_answers_500_and_the_server_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from fedkit.serve.app import create_app

    pred = Predictor(load_bundle(constant_bundle(tmp_path / "b", window=4, hidden=4)))
    with TestClient(create_app(pred)) as client:
        good = client.post("/v1/predict", json={"text": "the", "k": 1})
        assert good.json()["predictions"][0]["word"] == "cat"
        with monkeypatch.context() as m:
            m.setattr(pred, "predict", lambda texts, ks: 1 / 0)
            r = client.post("/v1/predict", json={"text": "the"})
        assert r.status_code == 500 and "ZeroDivisionError" in r.json()["error"]
        assert client.post("/v1/predict", json={"text": "the", "k": 1}).json() == good.json()
        metrics = client.get("/metrics").text
        assert 'fedkit_serve_requests_total{code="500",route="/v1/predict"} 1.0' in metrics


def test_a_bundle_without_vocabulary_cannot_be_served(tmp_path: Path) -> None:
    spec = ModelSpec(name="logreg", num_classes=3, input_shape=(4,))
    write_bundle(tmp_path / "v", params=model_params(spec.build()), spec=spec, words=None)
    with pytest.raises(ValueError, match="does not read words"):
        Predictor(load_bundle(tmp_path / "v"))
