"""The FL-tailored architectures: a ViT-Tiny-width transformer for 32×32 images and ResNet-18
with BatchNorm beside the GroupNorm one (parameter counts worked by hand)."""

from __future__ import annotations

import pytest
import torch

from fedkit.algorithm import ClientData
from fedkit.algorithms.fedavg import FedAvg
from fedkit.algorithms.fedbn import FedBN, batchnorm_keys
from fedkit.data.store import ClientStore
from fedkit.local import LocalTraining
from fedkit.models.registry import build_model
from fedkit.params import model_params
from fedkit.run import RunConfig, run
from fedkit.sim.serial import SerialExecutor


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_vit_tiny_parameter_count_by_hand() -> None:
    # dim 192, patch 4 on 3×32×32 (64 tokens), depth 12, mlp 768, 100 classes:
    #   patch embedding 3·4·4·192 + 192 = 9,408; class token 192; positions 65·192 = 12,480;
    #   per layer: qkv 3·192·192 + 3·192 = 111,168, out 192·192 + 192 = 37,056,
    #   mlp 192·768 + 768 = 148,224 and 768·192 + 192 = 147,648, two LayerNorms 768
    #   -> 444,864, times 12 = 5,338,368; final LayerNorm 384; head 192·100 + 100 = 19,300.
    m = build_model("vit_tiny", num_classes=100, input_shape=(3, 32, 32))
    assert n_params(m) == 9_408 + 192 + 12_480 + 5_338_368 + 384 + 19_300 == 5_380_132
    # a reduced one (what the CPU studies use): dim 64, depth 2, heads 4, mlp 128, 10 classes:
    #   embed 3·16·64 + 64 = 3,136; cls 64; pos 65·64 = 4,160; per layer 3·64·64 + 192
    #   + 64·64 + 64 + 64·128 + 128 + 128·64 + 64 + 256 = 33,472, times 2 = 66,944;
    #   norm 128; head 64·10 + 10 = 650.
    small = build_model(
        "vit_tiny", num_classes=10, input_shape=(3, 32, 32), dim=64, depth=2, heads=4, mlp_ratio=2
    )
    assert n_params(small) == 3_136 + 64 + 4_160 + 66_944 + 128 + 650


def test_vit_forward_shapes_and_no_batch_statistics() -> None:
    m = build_model("vit_tiny", num_classes=10, input_shape=(1, 28, 28), dim=32, depth=1, heads=2)
    out = m(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, 10)
    assert not batchnorm_keys(model_params(m)) and not list(m.buffers())
    # per-example norms: an example's logits do not depend on the rest of its batch
    m.eval()
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(m(x)[:1], m(x[:1]), atol=1e-5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"patch": 5}, "must divide the image size"),
        ({"dim": 100, "heads": 3}, "multiple of heads"),
        ({"depth": 0}, "depth must be an integer"),
        ({"mlp_ratio": 0.0}, "mlp_ratio"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_vit_rejects_bad_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model("vit_tiny", num_classes=10, input_shape=(3, 32, 32), **options)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build_model("vit_tiny", num_classes=10, input_shape=(784,))


def test_resnet18_bn_matches_gn_but_keeps_batch_statistics() -> None:
    # BatchNorm and GroupNorm both carry a weight and a bias per channel: the same 11,173,962
    # parameters for 10 classes; only BatchNorm keeps running statistics (what FedBN keeps local).
    bn = build_model("resnet18_bn", num_classes=10, input_shape=(3, 32, 32))
    gn = build_model("resnet18_gn", num_classes=10, input_shape=(3, 32, 32))
    assert n_params(bn) == n_params(gn) == 11_173_962
    assert [k for k, _ in bn.named_parameters()] == [k for k, _ in gn.named_parameters()]
    keys = batchnorm_keys(model_params(bn))
    # 20 norm layers (stem 1, 8 blocks × 2, 3 projection shortcuts), 4 float entries each
    # (weight, bias, running mean and variance; the integer batch counter is not a parameter)
    assert len(keys) == 20 * 4
    assert not batchnorm_keys(model_params(gn))
    assert bn(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def _image_store(num_clients: int, n: int = 6) -> ClientStore:
    g = torch.Generator().manual_seed(0)
    return ClientStore.from_clients(
        [
            ClientData(
                torch.randn(n, 3, 32, 32, generator=g) + c,
                torch.randint(0, 10, (n,), generator=g),
                torch.randn(2, 3, 32, 32, generator=g),
                torch.randint(0, 10, (2,), generator=g),
            )
            for c in range(num_clients)
        ]
    )


@pytest.mark.slow
def test_fedbn_keeps_each_clients_batchnorm_statistics_of_resnet18_bn() -> None:
    """One FedBN round of resnet18_bn on two clients: the shared layers move, the global model's
    BatchNorm entries do not, and each client's own running mean differs from the other's."""
    model = build_model("resnet18_bn", num_classes=10, input_shape=(3, 32, 32))
    x0 = model_params(model)
    store = _image_store(2)
    local = LocalTraining(lr=0.01, epochs=1, batch_size=3)
    out = run(
        FedBN(local=local),
        SerialExecutor(store, model),
        x0,
        RunConfig(rounds=1, clients_per_round=2, eval_every=0),
    )
    bn = batchnorm_keys(x0)
    assert not torch.equal(out.params["fc.weight"], x0["fc.weight"])
    assert all(torch.equal(out.params[k], x0[k]) for k in bn)
    mine = [store.get_state(c).params["stem.1.running_mean"] for c in range(2)]
    assert not torch.equal(mine[0], mine[1])


def test_a_small_vit_trains_one_fedavg_round() -> None:
    model = build_model(
        "vit_tiny", num_classes=10, input_shape=(3, 32, 32), dim=32, depth=1, heads=2
    )
    x0 = model_params(model)
    out = run(
        FedAvg(local=LocalTraining(lr=0.05, epochs=1, batch_size=3)),
        SerialExecutor(_image_store(3), model),
        x0,
        RunConfig(rounds=1, clients_per_round=3, eval_every=0),
    )
    moved = [k for k in x0 if not torch.equal(out.params[k], x0[k])]
    assert {"cls", "pos", "head.weight", "embed.weight"} <= set(moved)
    assert all(bool(torch.isfinite(v).all()) for v in out.params.values())
