"""Channel Gating (Hua et al., NeurIPS 2019) as a training-based baseline: per-activation gates, trained briefly.

How it maps to PruneGym's axes:

* **Not channel pruning.** The gate ``d = 1[BN(Y_p) > Δ]`` is decided per output activation (sample,
  channel, pixel), not per channel: every channel is computed for every image, in full where its gate opens
  and from the base path (``C_in/p`` of the inputs) elsewhere. It is a *runtime* method, like the runtime
  env's per-image masks, but finer than channels, so it cannot be expressed as keep ratios of either env
  (``keep_ratios`` is ``None``) and does not act in an env.
* **MACs**: the measured mean over the validation images of the paper's count (base paths always, the rest
  only where ``d = 1``; :func:`pruning.methods.channel_gating.measure_gating`), as a fraction of the base
  model's MACs per image. The lowest reachable fraction has every gate closed
  (:func:`pruning.methods.channel_gating.mac_floor`): for a CIFAR ResNet with only the block ``conv1`` s gated
  and ``p = 4`` it is 0.65 for ResNet-20 (0.63 for ResNet-56), so lower budgets need ``consumers=True``
  (gate the ``conv2`` s as well; floor 0.26).
* **Parameters**: nothing is removed; each gated conv adds one threshold per output channel (its gate BN has
  no affine parameters), so ``params_fraction`` is slightly above 1.
* **Latency**: PyTorch computes both sums densely; the savings need the paper's hardware.

The gate target Δ_target is chosen for the budget by a short search (:meth:`ChannelGatingBaseline.build`):
the gates' BNs are calibrated on validation images, then one threshold for all channels is bisected until
the measured MAC fraction on those images meets the budget. The thresholds start at that value and the
loss ``CE + 1e-4·Σ(Δ − Δ_target)²`` keeps pulling them there while the network (weights, BNs, thresholds)
adapts. The released code instead starts every threshold at 0 and trains 250 epochs from scratch with a
fixed ``Δ_target``: with the short budgets of a comparison the pull is far too weak to move the thresholds
to a target, so they start at it. Training can move the thresholds; the reported MAC fraction is what the
trained model measures on the whole validation split, which may differ from the budget.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from pruning.accounting import CostModel
from pruning.methods.channel_gating import (
    THRESHOLD_LOSS_WEIGHT,
    calibrate_gates,
    cg_convs,
    channel_gate,
    mac_floor,
    measure_gating,
    solve_target,
    threshold_loss,
)
from pruning.train import TrainConfig, fractional_epochs, train

from .base import BuiltModel, TrainContext, TrainedBaseline, register_baseline

__all__ = ["ChannelGatingBaseline"]


@register_baseline("channel_gating")
class ChannelGatingBaseline(TrainedBaseline):
    """Channel Gating: convert the units to gated convs, pick Δ_target for the budget, train, measure MACs.

    What :meth:`build` does (``train_seconds`` covers steps 1-4):

    1. converts a copy of ``base`` (:func:`pruning.methods.channel_gating.channel_gate`);
    2. calibrates the gates' BNs on the first ``calibration_images`` validation images;
    3. bisects one threshold Δ for all channels until the measured MAC fraction on those images meets the
       budget (:func:`pruning.methods.channel_gating.solve_target`); Δ_target = that value;
    4. trains everything (weights, BNs, thresholds) for ``context.epochs`` passes with cross-entropy +
       ``1e-4·Σ(Δ − Δ_target)²`` (SGD, momentum 0.9, cosine from ``lr``, weight decay 1e-4 on conv and linear
       weights only, as the released code exempts 1-D parameters and thresholds);
    5. measures the mean MAC fraction per image on the whole validation split.

    Args:
        budget: MAC budget; ``None`` (default) uses ``context.budget``.
        partitions: p: the base path reads ``C_in/p`` input channels. Default 4 (paper).
        use_group: Block-diagonal base path (the released ResNet-20 script's ``--use_group``). Default ``False``.
        alpha: α of the straight-through gradient. Default 2.0 (paper).
        sparse_bp: Gate gradient only where the gate is open (script's ``--sparse_bp``). Default ``True``.
        consumers: Also gate each unit's consumer conv (a ResNet block's ``conv2``). Default ``False``.
        lr: Peak SGD learning rate. Default 0.01: this fine-tunes a trained model (the paper trains from
            scratch at 0.1).
        batch_size: Default 128 (paper).
        calibration_images: Validation images for the gate calibration and the target search. Default 256.

    ``info`` of the result: ``target`` (Δ_target), ``calibration_macs_fraction`` (at Δ_target before
    training), ``mac_floor``, ``gate_rates`` (mean fraction of activations computed in full, per gated conv),
    ``macs_fraction_max`` (largest per-image fraction on val), ``threshold_mean`` (after training),
    ``partitions``, ``gated_convs``, ``train_top1`` (last epoch, augmented batches).

    Raises:
        ValueError: from :meth:`build` when the budget is below the reachable floor (see the module).
    """

    def __init__(
        self,
        *,
        budget: float | None = None,
        partitions: int = 4,
        use_group: bool = False,
        alpha: float = 2.0,
        sparse_bp: bool = True,
        consumers: bool = False,
        lr: float = 0.01,
        batch_size: int = 128,
        calibration_images: int = 256,
    ) -> None:
        super().__init__(budget=budget)
        if calibration_images <= 0:
            raise ValueError(f"calibration_images must be positive, got {calibration_images}")
        self.partitions = int(partitions)
        self.use_group = bool(use_group)
        self.alpha = float(alpha)
        self.sparse_bp = bool(sparse_bp)
        self.consumers = bool(consumers)
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.calibration_images = int(calibration_images)

    def build(self, base: nn.Module, context: TrainContext) -> BuiltModel:
        """Convert a copy of ``base``, choose Δ_target for the budget, train, and measure its MACs on val.

        Raises:
            ValueError: the budget is below what closing every gate reaches.
        """
        budget = context.budget if self.budget is None else self.budget
        base_macs = CostModel(base).base_macs
        base_params = sum(p.numel() for p in base.parameters())
        start = time.perf_counter()
        model = channel_gate(
            base, partitions=self.partitions, use_group=self.use_group, alpha=self.alpha, sparse_bp=self.sparse_bp,
            consumers=self.consumers,
        ).to(context.device)  # fmt: skip
        val = context.val_set
        n_cal = min(self.calibration_images, len(val))
        calibration = val.normalize(val.images[:n_cal]).to(context.device)
        calibrate_gates(model, calibration)
        target, calibration_fraction = solve_target(model, calibration, budget, base_macs=base_macs)
        data, whole = fractional_epochs(context.train_set, context.epochs, seed=context.seed)
        history: dict[str, Any] = {"epochs": []}
        if whole > 0:
            config = TrainConfig(
                epochs=whole, batch_size=self.batch_size, lr=self.lr, weight_decay=1e-4, seed=context.seed,
                device=context.device, distill=context.distill_weight, distill_temperature=context.distill_temperature,
            )  # fmt: skip
            history = train(
                model, data, config, progress=context.progress, desc="channel gating", teacher=context.teacher,
                extra_loss=lambda m: threshold_loss(m, target, THRESHOLD_LOSS_WEIGHT),
            )  # fmt: skip
        seconds = time.perf_counter() - start
        report = measure_gating(model, val, base_macs=base_macs)
        gated = cg_convs(model)
        params = sum(p.numel() for p in model.parameters())
        epochs = history.get("epochs") or [{}]
        info = {
            "target": target,
            "calibration_macs_fraction": calibration_fraction,
            "mac_floor": mac_floor(model, base_macs=base_macs),
            "gate_rates": report.gate_rates,
            "macs_fraction_max": report.macs_fraction_max,
            "threshold_mean": float(torch.cat([g.threshold.detach() for g in gated]).mean()),
            "partitions": self.partitions,
            "gated_convs": len(gated),
            "train_top1": epochs[-1].get("train_top1", float("nan")),
        }
        return BuiltModel(
            model=model.eval(), macs_fraction=report.macs_fraction, params_fraction=params / base_params,
            keep_ratios=None, train_seconds=seconds, info=info,
        )  # fmt: skip

    def measure(self, model: nn.Module, base: nn.Module, context: TrainContext) -> float:
        """The mean MAC fraction per image of a (re)trained gated ``model`` on the whole validation split."""
        return measure_gating(model, context.val_set, base_macs=CostModel(base).base_macs).macs_fraction
