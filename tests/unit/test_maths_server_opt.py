"""Server optimisers over several rounds, against values worked by hand from the papers.

Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2, written with the mean client
update Δ_t (the server step is ``step_along_delta``, which feeds ``g = -Δ`` to the optimiser):

    m_t = β1 m_{t-1} + (1 - β1) Δ_t                                  (all three methods)
    FedAdam:    v_t = β2 v_{t-1} + (1 - β2) Δ_t²
    FedYogi:    v_t = v_{t-1} - (1 - β2) Δ_t² sign(v_{t-1} - Δ_t²)
    FedAdagrad: v_t = v_{t-1} + Δ_t²
    x_{t+1} = x_t + η m_t / (√v_t + τ),      m_{-1} = 0,  v_{-1} = τ²

FedAvgM (Hsu et al. 2019): ``m_t = μ m_{t-1} + Δ_t;  x_{t+1} = x_t + η m_t``.

The numbers are chosen so each round's moments are exact binary fractions: η = 1, β1 = 0.5,
β2 = 0.75, τ = 0.5 (so v_{-1} = 0.25), x_0 = 1. Every expected value below was worked out by
hand from these formulas (the arithmetic is written next to it), not by running the code.
"""

from __future__ import annotations

import math

import pytest
import torch

from fedkit.server_opt import SGD, Adagrad, Adam, OptState, ServerOptimizer, Yogi, step_along_delta

ETA, B1, B2, TAU = 1.0, 0.5, 0.75, 0.5


def _t(v: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor([v], dtype=torch.float64)}


def _rounds(
    opt: ServerOptimizer, deltas: list[float], x0: float = 1.0
) -> list[tuple[float, float, float]]:
    """(x_{t+1}, m_t, v_t) after each round, driven through the public server-step API.

    The optimiser keeps the moment of ``g = -Δ``; ``m_t`` here is the paper's (of Δ), ``-m``.
    """
    x: dict[str, torch.Tensor] = _t(x0)
    state: OptState = opt.init(x)
    out = []
    for d in deltas:
        x, state = step_along_delta(opt, x, _t(d), state)
        m = -state.m["w"].item() if state.m else math.nan
        v = state.v["w"].item() if state.v else math.nan
        out.append((x["w"].item(), m, v))
    return out


def _check(got: list[tuple[float, float, float]], want: list[tuple[float, float, float]]) -> None:
    for t, (g, w) in enumerate(zip(got, want, strict=True)):
        for name, a, b in zip(("x", "m", "v"), g, w, strict=True):
            if not math.isnan(b):
                assert a == pytest.approx(b, rel=1e-12, abs=1e-15), f"round {t}: {name}"


def test_fedadam_three_rounds_by_hand() -> None:
    # Δ = 2, -1, 0.5
    # t=0: m = 0.5·0 + 0.5·2 = 1;        v = 0.75·0.25 + 0.25·4 = 1.1875
    #      x = 1 + 1/(√1.1875 + 0.5) = 1.629039718277513
    # t=1: m = 0.5·1 + 0.5·(-1) = 0;     v = 0.75·1.1875 + 0.25·1 = 1.140625;  x unchanged
    # t=2: m = 0.5·0 + 0.5·0.5 = 0.25;   v = 0.75·1.140625 + 0.25·0.25 = 0.91796875
    #      x = 1.629039718277513 + 0.25/(√0.91796875 + 0.5) = 1.8004949163302824
    opt = Adam(lr=ETA, beta1=B1, beta2=B2, tau=TAU)
    _check(
        _rounds(opt, [2.0, -1.0, 0.5]),
        [
            (1.629039718277513, 1.0, 1.1875),
            (1.629039718277513, 0.0, 1.140625),
            (1.8004949163302824, 0.25, 0.91796875),
        ],
    )


def test_fedyogi_four_rounds_by_hand_with_its_shrinking_branch() -> None:
    # Δ = 0.5, 2, 0.5, -1 — sign(v - Δ²) is 0, then -1 (v grows), then +1 twice (v SHRINKS,
    # where Adam's v would move towards Δ² and Adagrad's would grow)
    # t=0: m = 0.25;  v - Δ² = 0.25 - 0.25 = 0 → v = 0.25;  x = 1 + 0.25/(0.5 + 0.5) = 1.25
    # t=1: m = 0.5·0.25 + 0.5·2 = 1.125;  v - Δ² = 0.25 - 4 < 0 → v = 0.25 + 0.25·4 = 1.25
    #      x = 1.25 + 1.125/(√1.25 + 0.5) = 1.9452882373436315
    # t=2: m = 0.5·1.125 + 0.5·0.5 = 0.8125;  v - Δ² = 1.25 - 0.25 > 0 → v = 1.25 - 0.0625
    #      = 1.1875;  x = 1.9452882373436315 + 0.8125/(√1.1875 + 0.5) = 2.456383008444111
    # t=3: m = 0.5·0.8125 - 0.5 = -0.09375;  v - Δ² = 1.1875 - 1 > 0 → v = 1.1875 - 0.25
    #      = 0.9375;  x = 2.456383008444111 - 0.09375/(√0.9375 + 0.5) = 2.392531303459767
    opt = Yogi(lr=ETA, beta1=B1, beta2=B2, tau=TAU)
    got = _rounds(opt, [0.5, 2.0, 0.5, -1.0])
    _check(
        got,
        [
            (1.25, 0.25, 0.25),
            (1.9452882373436315, 1.125, 1.25),
            (2.456383008444111, 0.8125, 1.1875),
            (2.392531303459767, -0.09375, 0.9375),
        ],
    )
    assert got[3][2] < got[2][2] < got[1][2]  # the shrinking branch really shrank v


def test_fedadagrad_keeps_the_first_moment_beta1() -> None:
    # Δ = 2, -1, 3 with β1 = 0.5 (Algorithm 2's m_t; the old code ignored β1 and used Δ_t)
    # t=0: m = 1;    v = 0.25 + 4 = 4.25;   x = 1 + 1/(√4.25 + 0.5) = 1.3903882032022077
    # t=1: m = 0.5·1 + 0.5·(-1) = 0;       v = 4.25 + 1 = 5.25;  x unchanged (momentum cancels)
    # t=2: m = 0.5·0 + 0.5·3 = 1.5;        v = 5.25 + 9 = 14.25
    #      x = 1.3903882032022077 + 1.5/(√14.25 + 0.5) = 1.7412721908059978
    # β2 plays no part in Adagrad: a different β2 gives the same numbers.
    want = [
        (1.3903882032022077, 1.0, 4.25),
        (1.3903882032022077, 0.0, 5.25),
        (1.7412721908059978, 1.5, 14.25),
    ]
    for beta2 in (B2, 0.0, 0.99):
        _check(_rounds(Adagrad(lr=ETA, beta1=B1, beta2=beta2, tau=TAU), [2.0, -1.0, 3.0]), want)


def test_fedadagrad_with_beta1_zero_is_the_momentum_free_rule() -> None:
    # β1 = 0: m_t = Δ_t, so x_{t+1} = x_t + η Δ_t / (√v_t + τ)
    # t=0: v = 4.25; x = 1 + 2/(√4.25 + 0.5) = 1.7807764064044151
    # t=1: v = 5.25; x = 1.7807764064044151 - 1/(√5.25 + 0.5) = 1.422518836908831
    want = [(1.7807764064044151, 2.0, 4.25), (1.422518836908831, -1.0, 5.25)]
    _check(_rounds(Adagrad(lr=ETA, beta1=0.0, tau=TAU), [2.0, -1.0]), want)


def test_fedadagrad_default_beta1_is_the_papers() -> None:
    assert Adagrad().beta1 == 0.9 == Adam().beta1 == Yogi().beta1


def test_server_sgd_momentum_three_rounds_by_hand() -> None:
    # FedAvgM, η = 0.5, μ = 0.9, x_0 = 0, Δ = 1, 2, -3
    # t=0: m = 1;                 x = 0 + 0.5·1 = 0.5
    # t=1: m = 0.9·1 + 2 = 2.9;   x = 0.5 + 0.5·2.9 = 1.95
    # t=2: m = 0.9·2.9 - 3 = -0.39;  x = 1.95 - 0.5·0.39 = 1.755
    got = _rounds(SGD(lr=0.5, momentum=0.9), [1.0, 2.0, -3.0], x0=0.0)
    _check(got, [(0.5, 1.0, math.nan), (1.95, 2.9, math.nan), (1.755, -0.39, math.nan)])


def test_server_sgd_without_momentum_is_plain_fedavg() -> None:
    # x_{t+1} = x_t + η Δ_t with no state: 0 → 0.5·1 = 0.5 → 0.5 + 0.5·2 = 1.5
    opt = SGD(lr=0.5)
    assert opt.init(_t(0.0)) == OptState(m={}, v={})
    got = _rounds(opt, [1.0, 2.0], x0=0.0)
    assert [x for x, _, _ in got] == [0.5, 1.5]


def test_adaptive_step_is_per_coordinate() -> None:
    # Two coordinates with Δ = (2, -2): every moment is the same magnitude, x moves symmetrically.
    opt = Adam(lr=ETA, beta1=B1, beta2=B2, tau=TAU)
    x = {"w": torch.tensor([1.0, 1.0], dtype=torch.float64)}
    x, s = step_along_delta(opt, x, {"w": torch.tensor([2.0, -2.0])}, opt.init(x))
    step = 1 / (math.sqrt(1.1875) + 0.5)
    assert x["w"].tolist() == pytest.approx([1 + step, 1 - step], rel=1e-12)
    assert s.v["w"].tolist() == [1.1875, 1.1875]
    assert x["w"].dtype == torch.float64  # the float32 mean delta is cast to the parameter dtype


@pytest.mark.parametrize("cls", [Adam, Yogi, Adagrad])
@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"lr": 0.0}, "server_lr"),
        ({"lr": math.inf}, "server_lr"),
        ({"beta1": 1.0}, "beta1"),
        ({"beta1": -0.1}, "beta1"),
        ({"beta2": 1.0}, "beta2"),
        ({"tau": 0.0}, "tau"),
    ],
)
def test_bad_adaptive_settings_name_the_key(
    cls: type[Adam], kwargs: dict[str, float], key: str
) -> None:
    with pytest.raises(ValueError, match=rf"^{key} must be"):
        cls(**kwargs)
    assert cls(beta1=0.0, beta2=0.0).beta1 == 0.0  # the interval [0, 1) includes 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": 0.0}, r"^server_lr must be a finite number > 0, got 0.0"),
        ({"lr": math.nan}, r"^server_lr must be a finite number > 0"),
        ({"momentum": 1.0}, r"^server_momentum must be in \[0, 1\), got 1.0"),
        ({"momentum": -0.5}, r"^server_momentum must be in \[0, 1\)"),
    ],
)
def test_bad_sgd_settings_name_the_key(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SGD(**kwargs)


def test_server_sgd_momentum_state_is_a_checkpointable_dataclass_of_tensors() -> None:
    opt = SGD(lr=0.5, momentum=0.9)
    _, state = opt.step(_t(0.0), _t(1.0), opt.init(_t(0.0)))
    assert state.v == {} and set(state.m) == {"w"}  # every field a dict of tensors
