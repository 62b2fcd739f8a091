"""The papers' models, built by name: ``build_model(name, num_classes=..., input_shape=...)``.

Every model is built from ``torch.nn`` layers without running statistics (GroupNorm, never
BatchNorm) and, by default, without fused recurrent kernels, so that ``torch.func.functional_call``
and ``torch.func.vmap`` can evaluate many clients' copies of a model in one batched computation.
Construction is deterministic given ``torch.manual_seed``.

Names (see :data:`MODELS`): ``logreg``, ``mlp`` (2NN), ``cnn`` (McMahan et al. 2017),
``femnist_cnn`` (LEAF), ``lenet5`` (Hsu et al. 2019), ``resnet18_gn`` (Reddi et al. 2021),
``char_lstm`` (Shakespeare), ``nextword_lstm`` (a small BiLSTM next-word model).
"""

from __future__ import annotations

from fedkit.models.registry import MODELS, build_model, model_names
from fedkit.models.spec import ModelSpec

__all__ = ["MODELS", "ModelSpec", "build_model", "model_names"]
