"""The papers' models: exact parameter counts, forward shapes, registry errors, vmap-ability."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from fedkit.models import MODELS, build_model, model_names


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def lstm_params(inp: int, hidden: int) -> int:
    """One PyTorch LSTM layer/direction: 4 gates x (W_ih, W_hh, b_ih, b_hh)."""
    return 4 * hidden * (inp + hidden) + 2 * 4 * hidden


# Counts worked out by hand from the layer shapes (weights + biases), not read off the models.
PARAM_COUNTS = [
    # logreg on Synthetic(α, β): 60 x 10 + 10
    ("logreg", 10, (60,), 60 * 10 + 10),
    # 2NN 784-200-200-10 (McMahan et al. 2017): 784*200+200 + 200*200+200 + 200*10+10
    ("mlp", 10, (1, 28, 28), 199_210),
    # McMahan CNN, "same": conv 1->32 (832) + conv 32->64 (51,264) + fc 3136->512 + fc 512->10
    ("cnn", 10, (1, 28, 28), 1_663_370),
    # LEAF FEMNIST CNN: same convs, fc 3136->2048, fc 2048->62
    ("femnist_cnn", 62, (1, 28, 28), 832 + 51_264 + (3136 * 2048 + 2048) + (2048 * 62 + 62)),
    # Hsu et al. LeNet-5 ("valid"): 4,864 + 102,464 + 1600*384+384 + 384*192+192 + 192*10+10
    ("lenet5", 10, (3, 32, 32), 797_962),
    ("lenet5", 100, (3, 32, 32), 797_962 - 1_930 + 192 * 100 + 100),
    # ResNet-18 (CIFAR stem); GroupNorm has BatchNorm's affine parameter count
    ("resnet18_gn", 10, (3, 32, 32), 11_173_962),
    ("resnet18_gn", 100, (3, 32, 32), 11_173_962 - 5_130 + 512 * 100 + 100),
    # char-LSTM, vocabulary 90 (86 characters + pad/oov/bos/eos): emb 8, LSTM 256 x 2, fc
    ("char_lstm", 90, (80,), 90 * 8 + lstm_params(8, 256) + lstm_params(256, 256) + 256 * 90 + 90),
    # BiLSTM next-word, vocabulary 1000: emb 96, 2 directions x LSTM 128, fc 256 -> 1000
    ("nextword_lstm", 1000, (20,), 1000 * 96 + 2 * lstm_params(96, 128) + 256 * 1000 + 1000),
]


@pytest.mark.parametrize(("name", "classes", "shape", "expected"), PARAM_COUNTS)
def test_parameter_counts(name: str, classes: int, shape: tuple[int, ...], expected: int) -> None:
    assert num_params(build_model(name, num_classes=classes, input_shape=shape)) == expected


FORWARD = [
    ("logreg", 10, (60,), torch.float32, (10,)),
    ("logreg", 10, (1, 28, 28), torch.float32, (10,)),
    ("mlp", 10, (1, 28, 28), torch.float32, (10,)),
    ("cnn", 10, (1, 28, 28), torch.float32, (10,)),
    ("cnn", 62, (1, 28, 28), torch.float32, (62,)),
    ("femnist_cnn", 62, (1, 28, 28), torch.float32, (62,)),
    ("lenet5", 100, (3, 32, 32), torch.float32, (100,)),
    ("resnet18_gn", 100, (3, 32, 32), torch.float32, (100,)),
    ("char_lstm", 90, (12,), torch.int64, (12, 90)),
    ("nextword_lstm", 50, (7,), torch.int64, (50,)),
]


@pytest.mark.parametrize(("name", "classes", "shape", "dtype", "out"), FORWARD)
def test_forward_shapes(
    name: str,
    classes: int,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    out: tuple[int, ...],
) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=classes, input_shape=shape)
    n = 2
    x = torch.randint(0, classes, (n, *shape)) if dtype == torch.int64 else torch.randn(n, *shape)
    y = model(x)
    assert y.shape == (n, *out)
    assert torch.isfinite(y).all()


def test_lenet_same_padding_and_resnet_imagenet_stem() -> None:
    same = build_model("lenet5", num_classes=10, input_shape=(3, 32, 32), padding="same")
    # "same": 32 -> 16 -> 8, so fc1 has 64 * 8 * 8 inputs
    assert num_params(same) == 797_962 - 1600 * 384 + 4096 * 384
    assert same(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    net = build_model("resnet18_gn", num_classes=10, input_shape=(3, 32, 32), stem="imagenet")
    assert num_params(net) == 11_173_962 - 3 * 64 * 9 + 3 * 64 * 49
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_resnet_uses_groupnorm_with_two_groups_and_no_buffers() -> None:
    net = build_model("resnet18_gn", num_classes=10, input_shape=(3, 32, 32))
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 1 + 16 + 3  # stem, two per block, three projection shortcuts
    assert all(m.num_groups == 2 for m in norms)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert list(net.buffers()) == []


def test_causal_nextword_lstm_gives_per_position_logits() -> None:
    model = build_model("nextword_lstm", num_classes=30, input_shape=(6,), bidirectional=False)
    assert model(torch.randint(0, 30, (3, 6))).shape == (3, 6, 30)


@pytest.mark.parametrize("name", ["char_lstm", "nextword_lstm"])
def test_unrolled_lstm_equals_fused_kernel(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=40, input_shape=(9,))
    x = torch.randint(0, 40, (4, 9))
    fused = build_model(name, num_classes=40, input_shape=(9,), fused=True)
    fused.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(x), fused(x), atol=1e-5, rtol=1e-5)


def test_char_lstm_is_causal() -> None:
    torch.manual_seed(0)
    model = build_model("char_lstm", num_classes=20, input_shape=(8,))
    x = torch.randint(0, 20, (1, 8))
    x2 = x.clone()
    x2[0, 5:] = (x2[0, 5:] + 1) % 20
    torch.testing.assert_close(model(x)[:, :5], model(x2)[:, :5])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_construction_is_deterministic_given_manual_seed(name: str) -> None:
    shape = (
        (8,)
        if "lstm" in name
        else (3, 32, 32)
        if name in ("lenet5", "resnet18_gn")
        else (
            1,
            28,
            28,
        )
    )
    states = []
    for _ in range(2):
        torch.manual_seed(123)
        states.append(build_model(name, num_classes=10, input_shape=shape).state_dict())
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


VMAP_CASES = [
    ("logreg", (60,), torch.float32),
    ("mlp", (1, 28, 28), torch.float32),
    ("cnn", (1, 28, 28), torch.float32),
    ("lenet5", (3, 32, 32), torch.float32),
    ("resnet18_gn", (3, 8, 8), torch.float32),
    ("char_lstm", (5,), torch.int64),
    ("nextword_lstm", (5,), torch.int64),
]


@pytest.mark.parametrize(("name", "shape", "dtype"), VMAP_CASES)
def test_models_vmap_over_client_copies(
    name: str, shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    """Per-client gradients of stacked model copies under vmap equal the one-by-one gradients."""
    torch.manual_seed(0)
    models = [build_model(name, num_classes=10, input_shape=shape) for _ in range(2)]
    params, buffers = stack_module_state(models)
    x = torch.randint(0, 10, (2, 3, *shape)) if dtype == torch.int64 else torch.randn(2, 3, *shape)

    def loss(
        p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], xb: torch.Tensor
    ) -> torch.Tensor:
        return functional_call(models[0], (p, b), (xb,)).square().mean()

    grads = vmap(grad(loss))(params, buffers, x)
    for i, model in enumerate(models):
        model.zero_grad()
        model(x[i]).square().mean().backward()
        for key, p in model.named_parameters():
            assert p.grad is not None
            torch.testing.assert_close(grads[key][i], p.grad, atol=1e-5, rtol=1e-4)


def test_unknown_name_lists_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'vgg'.*cnn.*resnet18_gn"):
        build_model("vgg", num_classes=10, input_shape=(3, 32, 32))
    assert set(model_names()) == {
        "logreg",
        "mlp",
        "cnn",
        "femnist_cnn",
        "lenet5",
        "resnet18_gn",
        "resnet18_bn",
        "vit_tiny",
        "char_lstm",
        "nextword_lstm",
        "mlp_bn",
        "embedding_mlp",
    }


def test_unknown_option_lists_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['groups'\].*num_groups.*stem"):
        build_model("resnet18_gn", num_classes=10, input_shape=(3, 32, 32), groups=4)
    with pytest.raises(ValueError, match="allowed: none"):
        build_model("cnn", num_classes=10, input_shape=(1, 28, 28), width=3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 0, "input_shape": (1, 28, 28)}, "num_classes"),
        ({"num_classes": 10, "input_shape": ()}, "input_shape"),
        ({"num_classes": 10, "input_shape": (1, 28, 28), "num_groups": 3}, "num_groups"),
        ({"num_classes": 10, "input_shape": (1, 28, 28), "stem": "tiny"}, "stem"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model("resnet18_gn", **kwargs)  # type: ignore[arg-type]


def test_bad_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="too small"):
        build_model("lenet5", num_classes=10, input_shape=(3, 8, 8))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build_model("cnn", num_classes=10, input_shape=(28, 28))
    with pytest.raises(ValueError, match=r"\(T,\)"):
        build_model("char_lstm", num_classes=10, input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match="padding"):
        build_model("lenet5", num_classes=10, input_shape=(3, 32, 32), padding="full")
