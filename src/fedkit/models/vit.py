"""A small vision transformer for 32×32 images (Dosovitskiy et al. 2021, "An Image is Worth 16x16
Words"; sized as DeiT-Tiny, Touvron et al. 2021).

The image is cut into ``patch × patch`` patches (4×4 on 32×32 inputs: 64 tokens), each linearly
embedded to ``dim``; a learned class token and learned position embeddings are added, then
``depth`` pre-norm transformer encoder layers (multi-head self-attention with ``heads`` heads,
an MLP of ``mlp_ratio · dim`` with GELU), a final LayerNorm and a linear head on the class token.
The defaults are ViT-Tiny's width (``dim = 192``, ``heads = 3``, ``mlp_ratio = 4``) at
``depth = 12`` (5.4 M parameters for 100 classes).

Qu et al. 2022 ("Rethinking Architecture Design for Tackling Data Heterogeneity in Federated
Learning", CVPR) find transformers markedly more robust than CNNs to non-IID client data under
FedAvg; the norm layers are LayerNorms (per example, no batch statistics), so nothing about the
model depends on how a client's batch is drawn. Their runs start from ImageNet-pretrained
weights; this module trains from scratch (there is no weight download here), which favours the
CNNs at small budgets (docs/studies.md).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["VisionTransformer", "vit_tiny"]


class VisionTransformer(nn.Module):
    """Patch embedding, class token, pre-norm encoder layers, head (see module docstring)."""

    def __init__(
        self,
        *,
        in_channels: int,
        image_size: tuple[int, int],
        num_classes: int,
        patch: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        dropout: float,
    ) -> None:
        super().__init__()
        h, w = image_size
        tokens = (h // patch) * (w // patch)
        self.embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim,
            heads,
            dim_feedforward=int(dim * mlp_ratio),
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` for images ``(N, C, H, W)``."""
        t = self.embed(x).flatten(2).transpose(1, 2)  # (N, tokens, dim)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        out: Tensor = self.head(self.norm(self.encoder(t))[:, 0])
        return out


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"model 'vit_tiny': {name} must be an integer >= 1, got {value!r}")
    return value


def vit_tiny(
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    patch: int = 4,
    dim: int = 192,
    depth: int = 12,
    heads: int = 3,
    mlp_ratio: float = 4.0,
    dropout: float = 0.0,
) -> nn.Module:
    """A ViT-Tiny-width vision transformer (see the module docstring).

    Args:
        num_classes: Output classes.
        input_shape: ``(C, H, W)`` with ``H`` and ``W`` multiples of ``patch``.
        patch: Patch side (4 for 32×32: 64 tokens).
        dim: Token width (a multiple of ``heads``).
        depth: Encoder layers.
        heads: Attention heads.
        mlp_ratio: MLP hidden width over ``dim`` (> 0).
        dropout: Dropout in the encoder layers, in [0, 1).

    Raises:
        ValueError: A bad shape or option (the message names it).
    """
    if len(input_shape) != 3:
        raise ValueError(f"model 'vit_tiny': input_shape must be (C, H, W), got {input_shape}")
    for name, value in (("patch", patch), ("dim", dim), ("depth", depth), ("heads", heads)):
        _positive_int(name, value)
    c, h, w = input_shape
    if h % patch or w % patch:
        raise ValueError(f"model 'vit_tiny': patch {patch} must divide the image size {h}×{w}")
    if dim % heads:
        raise ValueError(f"model 'vit_tiny': dim {dim} must be a multiple of heads {heads}")
    if not mlp_ratio > 0:
        raise ValueError(f"model 'vit_tiny': mlp_ratio must be > 0, got {mlp_ratio!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"model 'vit_tiny': dropout must be in [0, 1), got {dropout!r}")
    return VisionTransformer(
        in_channels=c,
        image_size=(h, w),
        num_classes=num_classes,
        patch=patch,
        dim=dim,
        depth=depth,
        heads=heads,
        mlp_ratio=float(mlp_ratio),
        dropout=float(dropout),
    )
