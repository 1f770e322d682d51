r"""Directional pruning with gRDA (Chao, Wang, Xing & Cheng, NeurIPS 2020): ℓ1 dual averaging, sparse as it trains.

`Directional Pruning of Deep Neural Networks <https://proceedings.neurips.cc/paper/2020/hash/
a09e75c5c86a7bf6582d2b4d75aad615-Abstract.html>`_ trains with the *generalized regularized dual averaging*
(gRDA) optimizer, which keeps for every parameter the dual average (the accumulator)

    A_n = w_0 − Σ_{k=1..n} γ_k g_k          (A_0 = w_0, the starting weights)

and sets the weights to its soft-thresholded value

    w_n = sign(A_n) · max(|A_n| − g_n, 0),   g_n = Σ_{k=1..n} c · γ_k^{1/2+μ} · (k^μ − (k−1)^μ),

with ``γ_k`` the learning rate of step ``k``. With a constant learning rate ``γ`` the threshold is exactly
``c · γ^{1/2+μ} · n^μ``; a changing rate is accumulated increment by increment, as the released
``grda_pytorch.py`` does (its ``l1_accumulation``). Because the accumulator starts at the starting weights, a
pretrained model is where the search starts; because the threshold grows as ``n^μ``, sparsity grows with the
number of steps, with no preset sparsity level and no retraining. The sparsity is **unstructured**: a weight is
exactly 0 when ``|A_n| <= g_n``. A whole conv filter becomes 0 only when all its weights do, which is what
:func:`zero_filter_plan` turns into a channel plan.

Hyperparameters (methods.md §5): ``lr`` as for plain SGD (no momentum, no weight decay: the ℓ1 term takes
its place); ``μ ∈ (0.5, 1)``, with 0.501, 0.51, 0.55 recommended; ``c`` small (5e-4 to 5e-3 in the paper's
runs of hundreds of epochs; a short run needs a larger ``c`` for the threshold to reach the weights).

Example:
    >>> w = torch.nn.Parameter(torch.tensor([0.5, -0.02, 0.1]))
    >>> opt = GRDA([w], lr=0.1, c=0.2, mu=0.6)
    >>> w.grad = torch.tensor([1.0, 1.0, -2.0])
    >>> opt.step()
    >>> w.detach()  # A = w0 - 0.1 g = [0.4, -0.12, 0.3], threshold 0.2 * 0.1**1.1 = 0.0159
    tensor([ 0.3841, -0.1041,  0.2841])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..plan import PruningPlan
from ..train import OptimizerBuilder, TrainConfig
from ..units import get_units, unit_conv

__all__ = ["GRDA", "conv_sparsity", "grda_builder", "zero_filter_plan"]


class GRDA(torch.optim.Optimizer):
    """The gRDA optimizer: soft thresholding of the dual average, threshold ``c·lr^(1/2+μ)·n^μ``.

    Per parameter the state holds ``step`` (n), ``accumulator`` (``A_n``, initialised to the parameter's value
    at its first step) and ``threshold`` (``g_n``, accumulated as described in the module docstring). A
    parameter whose ``grad`` is ``None`` is skipped and its state does not advance (as in the released code).
    Parameter groups may set their own ``lr``, ``c`` and ``mu`` (e.g. ``c = 0`` for parameters that should
    not be sparsified, which then follow plain SGD: ``w_n = A_n``).

    Args:
        params: Parameters or parameter groups.
        lr: Learning rate γ. Default 0.01 (the released code's).
        c: Sparsity strength. Default 0.0 (the released code's: plain dual averaging = SGD).
        mu: Growth exponent μ of the threshold. Default 0.7 (the released code's; the paper recommends
            0.501 to 0.55).

    Raises:
        ValueError: ``lr <= 0``, ``c < 0`` or ``mu < 0`` (or not finite).
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.01, c: float = 0.0, mu: float = 0.7) -> None:
        for name, value, ok in (("lr", lr, lr > 0), ("c", c, c >= 0), ("mu", mu, mu >= 0)):
            if not (math.isfinite(value) and ok):
                raise ValueError(f"gRDA needs lr > 0, c >= 0 and mu >= 0; got {name}={value}")
        super().__init__(params, {"lr": lr, "c": c, "mu": mu})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One gRDA update of every parameter that has a gradient.

        Args:
            closure: Re-evaluates the model and returns the loss (optional, as for any torch optimizer).

        Returns:
            The closure's loss, or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, c, mu = float(group["lr"]), float(group["c"]), float(group["mu"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["accumulator"] = p.detach().clone()
                    state["threshold"] = 0.0
                n = state["step"] + 1
                state["step"] = n
                acc: torch.Tensor = state["accumulator"]
                acc.add_(p.grad, alpha=-lr)
                state["threshold"] += c * lr ** (0.5 + mu) * (n**mu - (n - 1) ** mu)
                p.copy_(acc.sign() * (acc.abs() - state["threshold"]).clamp_(min=0))
        return loss


def grda_builder(*, c: float, mu: float) -> OptimizerBuilder:
    """A ``make_optimizer`` for :func:`pruning.train.train` that builds :class:`GRDA` with ``config.lr``.

    ``train`` passes parameter groups split for weight decay; gRDA has no weight decay (set
    ``TrainConfig.weight_decay=0``: it is refused otherwise, so the config says what is run).

    Raises:
        ValueError: (when ``train`` calls it) ``config.weight_decay`` is not 0.
    """

    def build(groups: list[dict[str, Any]], config: TrainConfig) -> torch.optim.Optimizer:
        if config.weight_decay != 0:
            raise ValueError(
                f"gRDA has no weight decay (its ℓ1 threshold replaces it), but weight_decay={config.weight_decay}; "
                "set TrainConfig(weight_decay=0.0)"
            )
        return GRDA([{"params": g["params"]} for g in groups], lr=config.lr, c=c, mu=mu)

    return build


def conv_sparsity(model: nn.Module, *, tol: float = 0.0, units_only: bool = False) -> float:
    """Fraction of conv weights with ``|w| <= tol``: the unstructured sparsity.

    Args:
        model: A plain or gated model.
        tol: Largest ``|w|`` counted as zero. Default 0 (exact zeros, what gRDA produces).
        units_only: Count only the prunable units' convs (:func:`pruning.units.get_units`) instead of every
            ``Conv2d`` of the model (default).

    Raises:
        ValueError: the model has no conv.
    """
    if units_only:
        mods = dict(model.named_modules())
        convs = [unit_conv(mods[u.conv]) for u in get_units(model)]
    else:
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d; conv sparsity is undefined")
    zeros = sum(int((m.weight.detach().abs() <= tol).sum()) for m in convs)
    return zeros / sum(m.weight.numel() for m in convs)


def zero_filter_plan(model: nn.Module, *, tol: float = 1e-8) -> tuple[PruningPlan, list[int]]:
    """The static plan that drops every unit filter whose weights are all (nearly) zero.

    A filter (output channel ``c`` of a unit's conv) is dropped when ``max |W[c]| <= tol``. gRDA's soft
    threshold produces exact zeros, so ``tol`` (default 1e-8, far below the 1e-3 to 1e-1 of trained CIFAR
    ResNet weights) only absorbs floating-point noise. Each unit keeps at least one filter.

    A dropped filter is not always a no-op: its conv output is 0, so the channel carries the constant
    ``ReLU(β − γ·μ_run/σ)`` of its BN into the consumer, which slicing removes. gRDA's plan is therefore the
    zero-filter structure, scored as exported.

    Args:
        model: A plain model (usually after gRDA training).
        tol: Largest ``|w|`` counted as zero.

    Returns:
        ``(plan, zero_filters)``: the plan (``static_keep`` = kept / C per unit, ``static_scores`` = ``max |W[c]|``,
        so the kept channels are exactly the non-zero filters) and the number of all-zero filters per unit.
    """
    scores, keep, zeros = [], [], []
    mods = dict(model.named_modules())
    for unit in get_units(model):
        w = unit_conv(mods[unit.conv]).weight.detach()
        s = w.abs().amax(dim=(1, 2, 3))
        nonzero = int((s > tol).sum())
        scores.append(s.clone())
        zeros.append(unit.out_channels - nonzero)
        keep.append(max(1, nonzero) / unit.out_channels)
    return PruningPlan(static_keep=keep, static_scores=scores), zeros
