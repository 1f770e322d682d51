"""Training and evaluation of CIFAR CNNs: base training, fine-tuning and the gate stage, resumable.

The pieces, from small to large:

* :func:`evaluate` — top-1 and mean cross-entropy of a model on a dataset.
* :class:`TrainConfig` + :func:`train` — one training run (SGD or Adam, cosine or constant learning rate,
  standard CIFAR augmentation, optional gradient clipping) over all parameters or a chosen subset, with a
  progress bar, TensorBoard scalars and a per-epoch callback; hooks add a loss term (``extra_loss``), act after
  every step (``after_step``) or build another optimizer (``make_optimizer``). :func:`fractional_epochs` turns
  a fractional number of passes into whole epochs over a subset. Deterministic for a seed on the CPU: the data
  order and augmentation of epoch ``e`` come from a generator seeded with ``(seed, e)`` and the learning rate
  is a function of the step, so a run resumed at epoch ``e`` (with its optimizer state) continues exactly.
* :class:`Stage` + :func:`fit_schedule` — a sequence of named training stages that saves a training
  checkpoint atomically after every epoch (model, optimizer, stage, epoch, RNG states; readable with
  ``torch.load(weights_only=True)``) and resumes from one (:func:`load_training_state`).
* :func:`gate_stage` / :func:`gate_schedule` — steps 2-3 of the recipe of Chen, Chen & Pan, "Storage Efficient and
  Dynamic Flexible Runtime Channel Pruning via Deep Reinforcement Learning" (NeurIPS 2020, Sec. 4.1): with no pruning,
  fine-tune the backbone and the runtime predictors with the static importance ``u_s`` frozen (phase A,
  ``gate_predictor``), then train ``u_s`` too (phase B, ``gate_static``). Adam, lr 1e-3, as in the paper.

Batches come from :mod:`pruning.data`. The dataset normalises with its own ``mean``/``std``; a model's weights
expect the statistics of :func:`pruning.models.input_normalization`, so wrap datasets with
:func:`dataset_for_model` first (the functions here log a warning when the two differ).

Example:
    >>> from pruning.data import get_dataset
    >>> from pruning.models import get_model
    >>> model = get_model("tiny_cnn")
    >>> data = dataset_for_model(get_dataset("synthetic", split="train", size=64), model)
    >>> hist = train(model, data, TrainConfig(epochs=1, batch_size=32, lr=0.05), progress=False)
    >>> len(hist["epochs"]), sorted(hist["epochs"][0])
    (1, ['epoch', 'lr', 'time_s', 'train_loss', 'train_top1'])
"""

from __future__ import annotations

import copy
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pruning.accounting import CostModel
from pruning.checkpoint import atomic_save, check_plain, model_from_record, model_record
from pruning.data import BatchLoader, ImageDataset, iterate_batches
from pruning.gating import applied_masks, clear_plan, gated_units, is_gated, stored_masks
from pruning.models import input_normalization, load_checkpoint_file

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "TRAIN_STATE_FORMAT",
    "ExtraLoss",
    "OptimizerBuilder",
    "Stage",
    "StepHook",
    "TrainConfig",
    "dataset_for_model",
    "distillation_loss",
    "evaluate",
    "fit_schedule",
    "fractional_epochs",
    "gate_schedule",
    "gate_stage",
    "learning_rate",
    "load_training_state",
    "param_groups",
    "rng_state",
    "save_training_state",
    "seed_everything",
    "set_rng_state",
    "train",
]

log = logging.getLogger(__name__)

#: Value of the ``format`` entry of a training checkpoint written by :func:`save_training_state`.
TRAIN_STATE_FORMAT = "prunegym-train-state-v1"


class ScalarWriter(Protocol):
    """What :func:`train` needs of a TensorBoard ``SummaryWriter``: ``add_scalar``."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> Any:  # noqa: D102
        ...


# ----------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------


def dataset_for_model(dataset: ImageDataset, model: nn.Module) -> ImageDataset:
    """Return a view of ``dataset`` that normalises with the statistics ``model``'s weights expect.

    The images are shared (no copy); only ``mean`` and ``std`` differ. The public akamaster ResNet weights
    expect ImageNet statistics, every other model CIFAR-10's (see :func:`pruning.models.input_normalization`).

    Args:
        dataset: A split from :func:`pruning.data.get_dataset`.
        model: The model that will see the batches.

    Returns:
        A shallow copy of ``dataset`` with ``mean``/``std`` set from ``input_normalization(model)``.
    """
    mean, std = input_normalization(model)
    view = copy.copy(dataset)
    view.mean = tuple(float(v) for v in mean)
    view.std = tuple(float(v) for v in std)
    return view


def check_normalization(dataset: ImageDataset, model: nn.Module) -> None:
    """Log a warning when ``dataset`` is not normalised the way ``model``'s weights expect (the fix included)."""
    mean, std = input_normalization(model)
    if not (np.allclose(dataset.mean, mean, atol=1e-6) and np.allclose(dataset.std, std, atol=1e-6)):
        log.warning(
            "dataset %s/%s normalises with mean %s std %s, but the model's weights expect mean %s std %s; "
            "wrap the dataset with pruning.train.dataset_for_model(dataset, model)",
            dataset.name, dataset.split, tuple(dataset.mean), tuple(dataset.std), tuple(mean), tuple(std),
        )  # fmt: skip


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: ImageDataset,
    *,
    batch_size: int = 500,
    device: str | torch.device | None = None,
    max_batches: int | None = None,
    progress: bool = False,
    desc: str = "eval",
    cost_model: CostModel | None = None,
) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` on ``dataset`` (no augmentation, fixed order).

    The model runs in eval mode (BN running statistics) under ``torch.no_grad``; its previous training mode is
    restored afterwards. Whatever plan a gated model carries is applied as it is.

    Args:
        model: The classifier.
        dataset: The split to score, normalised for the model (:func:`dataset_for_model`).
        batch_size: Images per forward pass. Default 500.
        device: Where to run. ``None`` (default): where the model's parameters are. Any other device moves
            the model there (in place, as ``model.to`` does).
        max_batches: Score only the first ``max_batches`` batches (dataset order), for quick checks.
            ``None`` (default) scores everything.
        progress: Show a progress bar on stdout (off when stdout is not a terminal). Default ``False``.
        desc: Progress bar label.
        cost_model: The :class:`pruning.accounting.CostModel` of the gated ``model`` (built before a runtime
            source is set on it). When given, every image is costed from the masks its forward pass applied
            (:func:`pruning.gating.applied_masks` and the stored masks), so runtime-pruned models report what
            each input really cost.

    Returns:
        ``{"top1": percent correct, "loss": mean cross-entropy per image, "n": images scored}``; with
        ``cost_model`` also ``"macs_fraction"`` (mean backbone MAC fraction per image), ``"macs_fraction_max"``
        and ``"params_fraction"`` (stored backbone parameters).

    Raises:
        ValueError: ``max_batches`` is not positive, the dataset is empty, or ``cost_model`` is given for a
            model that is not gated.
    """
    if max_batches is not None and max_batches <= 0:
        raise ValueError(f"max_batches must be positive or None, got {max_batches}")
    if cost_model is not None and not is_gated(model):
        raise ValueError("cost_model= costs the masks of a gated model; gate it (pruning.gating.gate_model) first")
    if len(dataset) == 0:
        raise ValueError(f"dataset {dataset.name}/{dataset.split} is empty; nothing to evaluate")
    check_normalization(dataset, model)
    dev = _model_device(model) if device is None else torch.device(device)
    model.to(dev)
    was_training = model.training
    model.eval()
    total_batches = -(-len(dataset) // batch_size)
    if max_batches is not None:
        total_batches = min(total_batches, max_batches)
    correct = 0
    loss_sum = 0.0
    n = 0
    macs_sum, macs_max, params_fraction = 0.0, 0.0, 1.0
    batches = iterate_batches(dataset, batch_size, shuffle=False, augment=False, device=dev)
    bar = tqdm(
        batches,
        total=total_batches,
        desc=desc,
        leave=False,
        file=sys.stdout,
        disable=None if progress else True,
    )
    try:
        for i, (x, y) in enumerate(bar):
            if i >= total_batches:
                break
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
            n += int(y.shape[0])
            if cost_model is not None:
                cost = cost_model.from_masks(applied_masks(model), stored_masks(model))
                fractions = cost.macs_fraction.expand(int(y.shape[0]))
                macs_sum += float(fractions.sum())
                macs_max = max(macs_max, float(fractions.max()))
                params_fraction = float(cost.params_fraction)
    finally:
        bar.close()
        model.train(was_training)
    result: dict[str, float] = {"top1": 100.0 * correct / n, "loss": loss_sum / n, "n": n}
    if cost_model is not None:
        result.update(macs_fraction=macs_sum / n, macs_fraction_max=macs_max, params_fraction=params_fraction)
    return result


# ----------------------------------------------------------------------------------------------------
# Configuration: optimizers and learning-rate schedules (registries)
# ----------------------------------------------------------------------------------------------------

#: Learning-rate schedules: ``factor(progress)`` with progress = step / total steps of the run, in [0, 1).
SCHEDULES: dict[str, Callable[[float], float]] = {
    # Cosine annealing to 0 over the run (Loshchilov & Hutter 2017, without restarts), per step.
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0))),
    "constant": lambda progress: 1.0,
}


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, images: torch.Tensor | ImageDataset, *, batch_size: int = 128, max_images: int | None = None
) -> int:
    """Re-estimate every BatchNorm layer's running statistics under the model's current plan.

    Pruning changes the statistics of the layers that consume pruned channels; a pruned network scored with the
    statistics of the unpruned one is mis-normalised (ResNet-20 at half the MACs, static L1 plan: 13% top-1 on
    val with the stale statistics, 52% after re-estimation on 1 000 images). The statistics are reset and
    re-estimated as a cumulative average (``momentum=None``) over train-mode forward passes without gradients
    and without augmentation; no parameter changes, so this costs no training step. The model's training mode
    and each layer's ``momentum`` are restored afterwards.

    Args:
        model: Any network (gated or not; its plan is applied as set).
        images: Normalised images ``(N, 3, H, W)``, or a dataset (normalised for the model, read in order).
        batch_size: Images per forward pass (BatchNorm uses batch statistics: keep it >= 32).
        max_images: Use at most this many images (the first ones); ``None``: all.

    Returns:
        The number of images used (0 when the model has no BatchNorm layer: nothing is done).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    was_training = model.training
    momenta = [m.momentum for m in bns]
    device = _model_device(model)
    seen = 0
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        if isinstance(images, torch.Tensor):
            limit = len(images) if max_images is None else min(max_images, len(images))
            batches: Iterable[torch.Tensor] = (images[i : i + batch_size] for i in range(0, limit, batch_size))
        else:
            limit = len(images) if max_images is None else min(max_images, len(images))
            sub = images if limit == len(images) else images.subset(torch.arange(limit))
            batches = (x for x, _ in BatchLoader(sub, batch_size, shuffle=False, augment=False, device=device))
        for x in batches:
            model(x.to(device))
            seen += int(x.shape[0])
        if seen == 0:
            raise ValueError("recalibrate_bn got no images")
    finally:
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom
        model.train(was_training)
    return seen


@dataclass
class TrainConfig:
    """Hyperparameters of one :func:`train` run (one stage of a schedule)."""

    epochs: int = 1
    """Passes over the training set."""
    batch_size: int = 128
    """Images per optimizer step (the last batch of an epoch may be smaller)."""
    optimizer: str = "sgd"
    """A key of :data:`OPTIMIZERS`: ``"sgd"`` (with ``momentum``/``nesterov``) or ``"adam"``."""
    lr: float = 0.1
    """Peak learning rate (the value of the first step)."""
    momentum: float = 0.9
    """SGD momentum (ignored by Adam)."""
    nesterov: bool = True
    """Nesterov momentum for SGD (ignored by Adam)."""
    weight_decay: float = 1e-4
    """L2 penalty, applied only to parameters with 2 or more dimensions (conv, linear and predictor weights);
    1-D parameters (BN scales and shifts, biases, ``beta``, ``u_s``) are never decayed."""
    schedule: str = "cosine"
    """A key of :data:`SCHEDULES`: ``"cosine"`` (annealed to 0 per step over ``epochs``) or ``"constant"``."""
    grad_clip: float | None = None
    """Clip the global gradient norm of the trained parameters to this value; ``None`` does not clip."""
    seed: int = 0
    """Seeds the data order and augmentation (epoch ``e`` uses a generator seeded from ``(seed, e)``)."""
    device: str = "cpu"
    """Where to train (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...); the model is moved there."""
    log_every: int = 50
    """Steps between TensorBoard points of ``train/loss``, ``train/top1``, ``train/lr``."""
    val_batches: int | None = None
    """Validate on only this many batches of ``val_set`` after each epoch; ``None`` uses all of it."""
    val_batch_size: int = 500
    """Images per forward pass during validation."""
    distill: float = 0.0
    """Weight ``α`` of knowledge distillation from a teacher (:func:`distillation_loss`; :func:`train`'s
    ``teacher``): the loss is ``(1 - α)·CE + α·T²·KL``. 0 trains on the labels alone."""
    distill_temperature: float = 4.0
    """Softmax temperature ``T`` of the distillation term."""

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose from {sorted(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose from {sorted(SCHEDULES)}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size <= 0 or self.val_batch_size <= 0:
            raise ValueError("batch sizes must be positive")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip}")
        if self.log_every <= 0:
            raise ValueError(f"log_every must be positive, got {self.log_every}")
        if not (math.isfinite(self.distill) and 0.0 <= self.distill <= 1.0):
            raise ValueError(f"distill must be a weight in [0, 1], got {self.distill}")
        if not (math.isfinite(self.distill_temperature) and self.distill_temperature > 0):
            raise ValueError(f"distill_temperature must be positive, got {self.distill_temperature}")


def _sgd(groups: list[dict[str, Any]], config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)


def _adam(groups: list[dict[str, Any]], config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=config.lr)


#: Optimizer builders ``fn(param_groups, config)``; add an entry to offer another optimizer by name.
OPTIMIZERS: dict[str, Callable[[list[dict[str, Any]], TrainConfig], torch.optim.Optimizer]] = {
    "sgd": _sgd,
    "adam": _adam,
}


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of a step: ``config.lr × SCHEDULES[config.schedule](step / total_steps)``."""
    return config.lr * SCHEDULES[config.schedule](step / max(total_steps, 1))


def param_groups(params: Sequence[nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """Split parameters into a decayed group (2-D and up) and a non-decayed one (1-D: BN, biases, β, u_s).

    Args:
        params: The parameters to optimise, in a fixed order.
        weight_decay: L2 coefficient of the first group.

    Returns:
        Optimizer parameter groups; empty groups are left out.
    """
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


# ----------------------------------------------------------------------------------------------------
# Random state
# ----------------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Snapshot the global random states as tensors and plain values (``weights_only``-loadable).

    Returns:
        ``{"torch": ByteTensor, "python": [version, [ints], gauss], "numpy": {...}, "cuda": [ByteTensor]}``.
    """
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    return {
        "torch": torch.get_rng_state(),
        "python": [int(version), [int(v) for v in internal], gauss],
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the global random states saved by :func:`rng_state` (CUDA only where devices match)."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    npst = state["numpy"]
    keys = npst["keys"].numpy().astype(np.uint32)
    np.random.set_state((npst["name"], keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"]))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's data order and augmentation, independent of every other epoch's."""
    derived = int(np.random.SeedSequence([seed % 2**32, epoch]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(derived)


# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------

EpochCallback = Callable[[int, dict[str, Any], torch.optim.Optimizer], None]
#: ``fn(model) -> scalar tensor`` added to the cross-entropy of every step (a regulariser on the weights).
ExtraLoss = Callable[[nn.Module], torch.Tensor]


def distillation_loss(
    logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, alpha: float, temperature: float
) -> torch.Tensor:
    """Knowledge distillation (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015).

    ``(1 - alpha)·CE(logits, targets) + alpha·T²·KL(softmax(teacher/T) ‖ softmax(logits/T))``, batch mean; the
    ``T²`` keeps the soft term's gradients on the scale of the hard one's. ``alpha = 0`` is plain cross-entropy.

    Args:
        logits: Student logits ``(N, K)``.
        teacher_logits: Teacher logits ``(N, K)`` (no gradient flows into them).
        targets: Labels ``(N,)``.
        alpha: Weight of the distillation term in ``[0, 1]``.
        temperature: ``T > 0``.
    """
    hard = F.cross_entropy(logits, targets)
    if alpha == 0.0:
        return hard
    t = float(temperature)
    soft = F.kl_div(
        F.log_softmax(logits / t, dim=1), F.log_softmax(teacher_logits.detach() / t, dim=1), reduction="batchmean",
        log_target=True,
    )  # fmt: skip
    return (1.0 - alpha) * hard + alpha * t * t * soft
#: ``fn(model)`` called after every optimizer step under ``torch.no_grad`` (e.g. to clamp or project weights).
StepHook = Callable[[nn.Module], None]
#: ``fn(param_groups, config) -> optimizer``, the signature of an :data:`OPTIMIZERS` entry.
OptimizerBuilder = Callable[[list[dict[str, Any]], TrainConfig], torch.optim.Optimizer]


def fractional_epochs(train_set: ImageDataset, epochs: float, *, seed: int = 0) -> tuple[ImageDataset, int]:
    """Express ``epochs`` passes over ``train_set`` (fractions allowed) as whole epochs over a seeded subset.

    ``e`` passes become ``n = ceil(e)`` epochs over ``round(N·e / n)`` images (at least one) drawn without
    replacement from a generator seeded with ``seed``, so a run sees about ``e·N`` images, i.e. the optimizer
    steps of ``e`` epochs: 0.25 is one epoch over a quarter of the images, 2.5 three epochs over 5/6 of them.
    Whole numbers return ``train_set`` itself.

    Args:
        train_set: The full training split.
        epochs: Passes over it, ``>= 0``.
        seed: Seeds the choice of the subset.

    Returns:
        ``(dataset, n)``: the dataset to pass to :func:`train` and ``TrainConfig.epochs = n``.

    Raises:
        ValueError: ``epochs`` is negative or not finite.
    """
    if not (math.isfinite(epochs) and epochs >= 0):
        raise ValueError(f"epochs must be a finite number >= 0, got {epochs}")
    whole = math.ceil(epochs)
    if whole == epochs:
        return train_set, int(whole)
    size = max(1, round(len(train_set) * epochs / whole))
    idx = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed))[:size]
    return train_set.subset(idx.sort().values), int(whole)


def _select(model: nn.Module, params: Iterable[nn.Parameter] | None) -> list[nn.Parameter]:
    """The parameters to train, in ``model.named_parameters()`` order (so optimizer states line up)."""
    all_params = list(model.parameters())
    if params is None:
        return all_params
    chosen = {id(p) for p in params}
    if not chosen:
        raise ValueError("params is empty: pass the parameters to train, or None to train all of them")
    own = {id(p) for p in all_params}
    foreign = chosen - own
    if foreign:
        raise ValueError(f"{len(foreign)} of the given params do not belong to the model")
    return [p for p in all_params if id(p) in chosen]


def _set_bn_eval(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def train(
    model: nn.Module,
    train_set: ImageDataset,
    config: TrainConfig,
    *,
    params: Iterable[nn.Parameter] | None = None,
    val_set: ImageDataset | None = None,
    writer: ScalarWriter | None = None,
    progress: bool = True,
    start_epoch: int = 0,
    optimizer_state: Mapping[str, Any] | None = None,
    on_epoch_end: EpochCallback | None = None,
    log_prefix: str = "",
    bn_eval: bool = False,
    desc: str = "train",
    extra_loss: ExtraLoss | None = None,
    after_step: StepHook | None = None,
    make_optimizer: OptimizerBuilder | None = None,
    schedule_steps: tuple[int, int] | None = None,
    teacher: nn.Module | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place with cross-entropy, standard CIFAR augmentation and ``config``'s optimizer.

    Each epoch visits ``train_set`` in a random order with a random 32×32 crop of the 4-pixel zero-padded
    image and a random horizontal flip per sample (:func:`pruning.data.augment_batch`). The learning rate is
    set before every step from :func:`learning_rate`, so the schedule is a function of the step alone.

    Only ``params`` are trained: every other parameter gets ``requires_grad=False`` for the duration of the
    call (and receives no weight decay); all ``requires_grad`` flags and the model's training mode are
    restored on return, even after an error. Frozen parameters stay bit-identical. BatchNorm running
    statistics are buffers, not parameters: they keep updating in training mode unless ``bn_eval=True``.

    Args:
        model: The network (moved to ``config.device``).
        train_set: Training split, normalised for the model (:func:`dataset_for_model`).
        config: Hyperparameters.
        params: Parameters to train (any iterable of the model's parameters); ``None`` trains all.
        val_set: Scored with :func:`evaluate` after each epoch (``config.val_batches`` batches) when given.
        writer: A TensorBoard ``SummaryWriter`` (or anything with ``add_scalar``). Scalars, with the optional
            ``log_prefix`` in front: ``train/loss``, ``train/top1`` (running mean over the last ``log_every``
            steps), ``train/lr`` every ``log_every`` steps; ``val/top1``, ``val/loss`` after each epoch. The
            x axis is the optimizer step within this run.
        progress: Show a tqdm bar per epoch on stdout (automatically off when stdout is not a terminal).
        start_epoch: First epoch to run (``0 <= start_epoch <= config.epochs``); with the
            ``optimizer_state`` saved after epoch ``start_epoch - 1``, a resumed run matches an uninterrupted
            one exactly on the CPU.
        optimizer_state: ``optimizer.state_dict()`` to continue from (same ``params`` and config).
        on_epoch_end: Called as ``fn(epoch, record, optimizer)`` after each epoch (and its validation), e.g.
            to save a checkpoint; ``record`` is the epoch's entry of the returned history.
        log_prefix: Prepended to every TensorBoard tag, e.g. ``"gate/predictor/"``.
        bn_eval: Keep every BatchNorm layer in eval mode (running statistics frozen) while training.
        desc: Progress bar and log label.
        extra_loss: ``fn(model) -> scalar`` added to every step's cross-entropy before the backward pass (a
            sparsity regulariser, for instance); ``train_loss`` then reports the sum.
        after_step: ``fn(model)`` called after every optimizer step under ``torch.no_grad`` (e.g. clamping
            BN scales into a range).
        make_optimizer: Builds the optimizer instead of ``OPTIMIZERS[config.optimizer]``, with the same
            signature ``fn(param_groups, config)``: for optimizers with options of their own. The learning
            rate of every group is still set from the schedule before each step.
        schedule_steps: ``(offset, total)``: this call is one piece of a longer schedule of ``total`` optimizer
            steps that starts at step ``offset`` (a multi-phase run with one cosine over all its phases);
            step ``i`` of this call then uses :func:`learning_rate` at ``offset + i`` of ``total``. ``None``:
            the schedule spans this call's ``config.epochs`` alone.
        teacher: The network distilled from when ``config.distill > 0`` (e.g. the unpruned base model): run in
            eval mode without gradients on every augmented batch; never changed.

    Returns:
        ``{"epochs": [record, ...], "steps": steps run}``; a record holds ``epoch`` (0-based), ``train_loss``
        and ``train_top1`` (means over the epoch, on augmented batches), ``lr`` (of the last step),
        ``time_s``, and ``val_top1``, ``val_loss`` when ``val_set`` is given. Plain Python values.

    Raises:
        ValueError: ``params`` is empty or foreign, or ``start_epoch`` is out of range.
        FloatingPointError: The loss became NaN or infinite (lower the learning rate or set ``grad_clip``).
    """
    if not 0 <= start_epoch <= config.epochs:
        raise ValueError(f"start_epoch must be in [0, {config.epochs}], got {start_epoch}")
    if len(train_set) == 0:
        raise ValueError(f"training set {train_set.name}/{train_set.split} is empty")
    if config.distill > 0 and teacher is None:
        raise ValueError(f"config.distill={config.distill} needs a teacher: pass teacher=<the unpruned model>")
    check_normalization(train_set, model)
    device = torch.device(config.device)
    model.to(device)
    selected = _select(model, params)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    history: dict[str, Any] = {"epochs": [], "steps": 0}
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        for p in selected:
            p.requires_grad_(True)
        build = OPTIMIZERS[config.optimizer] if make_optimizer is None else make_optimizer
        optimizer = build(param_groups(selected, config.weight_decay), config)
        if optimizer_state is not None:
            optimizer.load_state_dict(dict(optimizer_state))
        steps_per_epoch = -(-len(train_set) // config.batch_size)
        total_steps = config.epochs * steps_per_epoch
        offset = 0
        if schedule_steps is not None:
            offset, total_steps = (int(v) for v in schedule_steps)
            if offset < 0 or offset + config.epochs * steps_per_epoch > total_steps:
                raise ValueError(
                    f"schedule_steps={schedule_steps} does not hold this call's {config.epochs * steps_per_epoch} "
                    f"steps: need 0 <= offset and offset + steps <= total"
                )
        for epoch in range(start_epoch, config.epochs):
            t0 = time.perf_counter()
            record = _train_epoch(
                model, train_set, config, optimizer, selected,
                epoch=epoch, steps_per_epoch=steps_per_epoch, total_steps=total_steps, writer=writer,
                progress=progress, log_prefix=log_prefix, bn_eval=bn_eval, desc=desc,
                extra_loss=extra_loss, after_step=after_step, schedule_offset=offset,
                teacher=teacher.to(device).eval() if teacher is not None and config.distill > 0 else None,
            )  # fmt: skip
            history["steps"] += steps_per_epoch
            step = (epoch + 1) * steps_per_epoch
            if val_set is not None:
                val = evaluate(
                    model, val_set, batch_size=config.val_batch_size, max_batches=config.val_batches
                )
                record["val_top1"], record["val_loss"] = val["top1"], val["loss"]
                if writer is not None:
                    writer.add_scalar(f"{log_prefix}val/top1", val["top1"], step)
                    writer.add_scalar(f"{log_prefix}val/loss", val["loss"], step)
            record["time_s"] = time.perf_counter() - t0
            log.info(
                "%s epoch %d/%d: loss %.4f, top-1 %.2f%%%s, lr %.3g, %.1fs",
                desc, epoch + 1, config.epochs, record["train_loss"], record["train_top1"],
                f", val top-1 {record['val_top1']:.2f}%" if "val_top1" in record else "",
                record["lr"], record["time_s"],
            )  # fmt: skip
            history["epochs"].append(record)
            if on_epoch_end is not None:
                on_epoch_end(epoch, record, optimizer)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
    return history


def _train_epoch(
    model: nn.Module,
    train_set: ImageDataset,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    selected: list[nn.Parameter],
    *,
    epoch: int,
    steps_per_epoch: int,
    total_steps: int,
    writer: ScalarWriter | None,
    progress: bool,
    log_prefix: str,
    bn_eval: bool,
    desc: str,
    extra_loss: ExtraLoss | None = None,
    after_step: StepHook | None = None,
    schedule_offset: int = 0,
    teacher: nn.Module | None = None,
) -> dict[str, Any]:
    """One pass over the data; returns the epoch's record (without validation)."""
    device = torch.device(config.device)
    model.train()
    if bn_eval:
        _set_bn_eval(model)
    loader = BatchLoader(
        train_set, config.batch_size, shuffle=True, augment=True,
        generator=_epoch_generator(config.seed, epoch), device=device,
    )  # fmt: skip
    bar = tqdm(
        loader, desc=f"{desc} {epoch + 1}/{config.epochs}", leave=False, file=sys.stdout,
        disable=None if progress else True, dynamic_ncols=True,
    )  # fmt: skip
    t0 = time.perf_counter()
    loss_sum, correct, seen = 0.0, 0, 0
    win_loss, win_correct, win_seen = 0.0, 0, 0
    lr = config.lr
    try:
        for i, (x, y) in enumerate(bar):
            step = epoch * steps_per_epoch + i
            lr = learning_rate(config, schedule_offset + step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            logits = model(x)
            if teacher is not None:
                with torch.no_grad():
                    target_logits = teacher(x)
                loss = distillation_loss(logits, target_logits, y, config.distill, config.distill_temperature)
            else:
                loss = F.cross_entropy(logits, y)
            if extra_loss is not None:
                loss = loss + extra_loss(model)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{desc}: loss is {loss.item()} at epoch {epoch + 1}, step {i + 1} (lr {lr:.3g}); "
                    "lower the learning rate or set grad_clip"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(selected, config.grad_clip)
            optimizer.step()
            if after_step is not None:
                with torch.no_grad():
                    after_step(model)
            b = int(y.shape[0])
            batch_loss = float(loss.detach()) * b
            batch_correct = int((logits.detach().argmax(dim=1) == y).sum())
            loss_sum, correct, seen = loss_sum + batch_loss, correct + batch_correct, seen + b
            win_loss, win_correct, win_seen = win_loss + batch_loss, win_correct + batch_correct, win_seen + b
            if progress:
                bar.set_postfix(
                    loss=f"{loss_sum / seen:.3f}", top1=f"{100.0 * correct / seen:.1f}", refresh=False
                )
            if writer is not None and (step % config.log_every == 0 or i == steps_per_epoch - 1):
                writer.add_scalar(f"{log_prefix}train/loss", win_loss / win_seen, step)
                writer.add_scalar(f"{log_prefix}train/top1", 100.0 * win_correct / win_seen, step)
                writer.add_scalar(f"{log_prefix}train/lr", lr, step)
                win_loss, win_correct, win_seen = 0.0, 0, 0
    finally:
        bar.close()
    return {
        "epoch": epoch,
        "train_loss": loss_sum / seen,
        "train_top1": 100.0 * correct / seen,
        "lr": lr,
        "time_s": time.perf_counter() - t0,
    }


# ----------------------------------------------------------------------------------------------------
# Schedules of stages, with checkpoints and resume
# ----------------------------------------------------------------------------------------------------


@dataclass
class Stage:
    """One named stage of a :func:`fit_schedule` run."""

    name: str
    """Unique name, stored in checkpoints (e.g. ``"base"``, ``"gate_predictor"``, ``"gate_static"``)."""
    config: TrainConfig
    """Hyperparameters of the stage."""
    select: Callable[[nn.Module], list[nn.Parameter]] | None = None
    """``fn(model)`` returning the parameters to train; ``None`` trains all of them."""
    prepare: Callable[[nn.Module], nn.Module] | None = None
    """``fn(model) -> model`` applied once when the stage starts (e.g. gating the model, clearing a plan);
    it may return a new module. It is not applied again when a run resumes inside the stage, because the
    checkpoint already holds the prepared model."""
    log_prefix: str = ""
    """Prefix of the stage's TensorBoard tags, e.g. ``"gate/predictor/"``."""
    bn_eval: bool = False
    """Freeze BatchNorm running statistics during the stage (see :func:`train`)."""


def save_training_state(
    path: str | Path,
    model: nn.Module,
    *,
    arch: str,
    num_classes: int,
    stage: str,
    stage_index: int,
    epoch: int,
    prepared: bool,
    optimizer_state: Mapping[str, Any] | None = None,
    history: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a training checkpoint atomically (``torch.load(weights_only=True)`` reads it).

    Args:
        path: Destination, conventionally ``<run dir>/checkpoint.pt``.
        model: The model (plain or gated); stored in the model file format of :mod:`pruning.checkpoint`.
        arch: Registry name of the model.
        num_classes: Classifier outputs.
        stage: Name of the current stage.
        stage_index: Its position in the schedule.
        epoch: Epochs of that stage completed.
        prepared: Whether the stage's ``prepare`` has been applied to ``model``.
        optimizer_state: ``optimizer.state_dict()`` after ``epoch`` epochs (``None`` before the first).
        history: The schedule's history so far (plain types).
        extra: Anything else to keep (plain types), e.g. evaluations made before training.

    Returns:
        The written path.
    """
    state = {
        "format": TRAIN_STATE_FORMAT,
        "model": model_record(model, arch=arch, num_classes=num_classes),
        "stage": stage,
        "stage_index": int(stage_index),
        "epoch": int(epoch),
        "prepared": bool(prepared),
        "optimizer": dict(optimizer_state) if optimizer_state is not None else None,
        "history": dict(history or {}),
        "rng": rng_state(),
        "extra": dict(extra or {}),
        "time": time.time(),
    }
    check_plain(state, where="training state")
    return atomic_save(state, path)


def load_training_state(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Read a training checkpoint written by :func:`save_training_state` (or :func:`fit_schedule`).

    Args:
        path: The checkpoint file.

    Returns:
        ``(model, state)``: the model rebuilt from the checkpoint (gated if it was; eval mode, CPU) and the
        whole state dict, to pass to ``fit_schedule(..., resume=state)``.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: The file is unreadable or is not a PruneGym training checkpoint.
    """
    state = load_checkpoint_file(path)
    if not isinstance(state, Mapping) or state.get("format") != TRAIN_STATE_FORMAT:
        raise ValueError(
            f"{path} is not a PruneGym training checkpoint (expected format {TRAIN_STATE_FORMAT!r}); "
            "model files (model.pt) load with pruning.checkpoint.load_model"
        )
    model = model_from_record(state["model"], source=str(path))
    return model, dict(state)


def fit_schedule(
    model: nn.Module,
    stages: Sequence[Stage],
    train_set: ImageDataset,
    *,
    val_set: ImageDataset | None = None,
    writer: ScalarWriter | None = None,
    progress: bool = True,
    checkpoint_path: str | Path | None = None,
    arch: str | None = None,
    num_classes: int | None = None,
    extra: Mapping[str, Any] | None = None,
    resume: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Run training stages in order, checkpointing after every epoch, optionally resuming from a checkpoint.

    For each stage: ``prepare`` (if any) is applied, then :func:`train` runs with the stage's config, the
    parameters chosen by ``select`` and the stage's TensorBoard prefix. After every epoch the training state
    is written atomically to ``checkpoint_path`` (see :func:`save_training_state`): the model, the optimizer
    state, the stage and epoch, the history and the RNG states. A crash therefore loses at most one epoch,
    and a resumed run continues bit-exactly on the CPU.

    To resume: ``model, state = load_training_state(path)`` then ``fit_schedule(model, stages, ...,
    resume=state)`` with the same stages (names are checked; configs may differ, e.g. more epochs). The RNG
    states are restored, the stage at which the run stopped continues from its next epoch with its optimizer
    state, and finished stages are skipped.

    Args:
        model: The model (the one rebuilt by :func:`load_training_state` when resuming).
        stages: The schedule. Names must be unique.
        train_set: Training split, normalised for the model.
        val_set: Validation split, scored after every epoch when given.
        writer: TensorBoard writer (see :func:`train`).
        progress: Show progress bars.
        checkpoint_path: Where to write the training checkpoint; ``None`` writes none.
        arch: Registry name of the model (required with ``checkpoint_path``).
        num_classes: Classifier outputs (required with ``checkpoint_path``).
        extra: Plain values stored in every checkpoint under ``extra`` (when resuming, the checkpoint's own
            ``extra`` is kept and updated with these).
        resume: A state from :func:`load_training_state`.

    Returns:
        ``(model, history)``: the trained model (a new module if a ``prepare`` returned one) and
        ``{stage name: {"epochs": [records], "time_s": seconds}}`` for every stage run so far (resumed stages
        include the epochs run before the interruption).

    Raises:
        ValueError: Duplicate stage names, missing ``arch``/``num_classes``, or a ``resume`` state whose stage
            is not in ``stages``.
    """
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be unique, got {names}")
    if checkpoint_path is not None and (arch is None or num_classes is None):
        raise ValueError("fit_schedule needs arch and num_classes to write checkpoints")
    history: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    index, done, prepared = 0, 0, False
    optimizer_state: Mapping[str, Any] | None = None
    if resume is not None:
        stage_name = resume["stage"]
        index = int(resume["stage_index"])
        if index >= len(stages) or stages[index].name != stage_name:
            raise ValueError(
                f"cannot resume: the checkpoint is in stage {stage_name!r} (#{index}), "
                f"the schedule is {names}"
            )
        done, prepared = int(resume["epoch"]), bool(resume["prepared"])
        optimizer_state = resume.get("optimizer")
        history = copy.deepcopy(dict(resume.get("history") or {}))
        meta = dict(resume.get("extra") or {})
        set_rng_state(resume["rng"])
        log.info("resuming in stage %s after %d epoch(s)", stage_name, done)
    meta.update(extra or {})

    def save(stage_i: int, epoch: int, is_prepared: bool, opt: Mapping[str, Any] | None) -> None:
        if checkpoint_path is None:
            return
        assert arch is not None and num_classes is not None
        save_training_state(
            checkpoint_path, model, arch=arch, num_classes=num_classes, stage=stages[stage_i].name,
            stage_index=stage_i, epoch=epoch, prepared=is_prepared, optimizer_state=opt, history=history,
            extra=meta,
        )  # fmt: skip

    for i in range(index, len(stages)):
        stage = stages[i]
        if i > index or resume is None:
            done, prepared, optimizer_state = 0, False, None
        if not prepared:
            if stage.prepare is not None:
                model = stage.prepare(model)
            prepared = True
        entry = history.setdefault(stage.name, {"epochs": [], "time_s": 0.0})
        entry["epochs"] = [r for r in entry["epochs"] if r["epoch"] < done]
        if done >= stage.config.epochs:
            continue

        def on_epoch_end(
            epoch: int, record: dict[str, Any], optimizer: torch.optim.Optimizer, _i: int = i
        ) -> None:
            stage_entry = history[stages[_i].name]
            stage_entry["epochs"].append(record)
            stage_entry["time_s"] = sum(r["time_s"] for r in stage_entry["epochs"])
            save(_i, epoch + 1, True, optimizer.state_dict())

        train(
            model, train_set, stage.config,
            params=None if stage.select is None else stage.select(model),
            val_set=val_set, writer=writer, progress=progress, start_epoch=done,
            optimizer_state=optimizer_state, on_epoch_end=on_epoch_end, log_prefix=stage.log_prefix,
            bn_eval=stage.bn_eval, desc=stage.name,
        )  # fmt: skip
    return model, history


# ----------------------------------------------------------------------------------------------------
# The gate stage of Chen et al.
# ----------------------------------------------------------------------------------------------------


def _require_gated(model: nn.Module, what: str = "the gate stage") -> None:
    if not is_gated(model):
        raise ValueError(
            f"{what} needs a gated model (GatedConv units with u_r and u_s); "
            "gate it first with pruning.gating.gate_model(model)"
        )


def _all_but_static_importance(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter except the units' static importance ``u_s`` (phase A of the gate stage)."""
    frozen = {id(g.static_importance) for g in gated_units(model) if g.static_importance is not None}
    return [p for p in model.parameters() if id(p) not in frozen]


@dataclass
class _EnterGateStage:
    """``prepare`` of phase A: optionally gate the model, require gating, remove any plan (no pruning)."""

    gate: Callable[[nn.Module], nn.Module] | None = None

    def __call__(self, model: nn.Module) -> nn.Module:
        if self.gate is not None and not is_gated(model):
            model = self.gate(model)
        _require_gated(model)
        clear_plan(model)  # Chen et al., Sec. 4.1, steps 2-3 train with d_s = d_r = 1: nothing pruned
        return model


def gate_schedule(
    *,
    predictor_epochs: int,
    static_epochs: int,
    lr: float = 1e-3,
    batch_size: int = 128,
    weight_decay: float = 0.0,
    grad_clip: float | None = 40.0,
    schedule: str = "constant",
    seed: int = 0,
    device: str = "cpu",
    log_every: int = 50,
    val_batches: int | None = None,
    gate: Callable[[nn.Module], nn.Module] | None = None,
) -> list[Stage]:
    """The two stages of Chen et al.'s gate fine-tuning, for :func:`fit_schedule` (see :func:`gate_stage`).

    Args:
        predictor_epochs: Epochs of phase A (``gate_predictor``): backbone + predictors, ``u_s`` frozen.
        static_epochs: Epochs of phase B (``gate_static``): everything, ``u_s`` included.
        lr: Adam learning rate. Default 1e-3 (Chen et al., Sec. 4.1, CIFAR-10).
        batch_size: Default 128 (the released code).
        weight_decay: L2 on 2-D weights. Default 0 (the paper gives none).
        grad_clip: Global gradient-norm clip. Default 40 (the released code's CNN phase).
        schedule: Learning-rate schedule. Default ``"constant"`` (the paper's CIFAR recipe).
        seed: Data-order seed of phase A; phase B uses ``seed + 1``.
        device: Where to train.
        log_every: Steps between TensorBoard points.
        val_batches: Validation batches per epoch (``None``: all).
        gate: ``fn(plain model) -> gated model`` applied at the start of phase A when the model is not gated
            yet (e.g. ``functools.partial(gate_model, inplace=True)``); ``None`` requires a gated model.

    Returns:
        ``[Stage("gate_predictor", ...), Stage("gate_static", ...)]`` logging under ``gate/predictor/`` and
        ``gate/static/``.
    """
    common = dict(
        batch_size=batch_size, optimizer="adam", lr=lr, weight_decay=weight_decay, schedule=schedule,
        grad_clip=grad_clip, device=device, log_every=log_every, val_batches=val_batches,
    )  # fmt: skip
    return [
        Stage(
            "gate_predictor",
            TrainConfig(epochs=predictor_epochs, seed=seed, **common),  # type: ignore[arg-type]
            select=_all_but_static_importance,
            prepare=_EnterGateStage(gate),
            log_prefix="gate/predictor/",
        ),
        Stage(
            "gate_static",
            TrainConfig(epochs=static_epochs, seed=seed + 1, **common),  # type: ignore[arg-type]
            prepare=_EnterGateStage(None),
            log_prefix="gate/static/",
        ),
    ]


def gate_stage(
    model: nn.Module,
    train_set: ImageDataset,
    *,
    predictor_epochs: int,
    static_epochs: int,
    lr: float = 1e-3,
    batch_size: int = 128,
    weight_decay: float = 0.0,
    grad_clip: float | None = 40.0,
    seed: int = 0,
    device: str = "cpu",
    val_set: ImageDataset | None = None,
    writer: ScalarWriter | None = None,
    progress: bool = True,
    log_every: int = 50,
    val_batches: int | None = None,
) -> dict[str, Any]:
    """Fine-tune a gated model with no pruning, as steps 2-3 of Chen et al.'s recipe (Sec. 4.1).

    * Phase A (``gate_predictor``, ``predictor_epochs``): the backbone and the runtime predictors ``u_r``
      learn together while every unit's static importance ``u_s`` stays frozen at its current value (1 for a
      freshly gated model); the paper fixes ``u_s = 1`` here.
    * Phase B (``gate_static``, ``static_epochs``): ``u_s`` is freed and trained with everything else.

    Both use Adam at ``lr`` (paper: 1e-3 on CIFAR-10), no pruning (any plan is cleared first: keep ratios
    ``d_s = d_r = 1``), standard augmentation, and log to TensorBoard under ``gate/predictor/`` and
    ``gate/static/``. The model is trained in place. For a checkpointed, resumable run use
    :func:`gate_schedule` with :func:`fit_schedule`.

    Args:
        model: A model gated with :func:`pruning.gating.gate_model`.
        train_set: Training split, normalised for the model.
        predictor_epochs: Epochs of phase A.
        static_epochs: Epochs of phase B.
        lr: Adam learning rate. Default 1e-3.
        batch_size: Default 128.
        weight_decay: L2 on 2-D weights. Default 0.
        grad_clip: Gradient-norm clip. Default 40 (the released code).
        seed: Data-order seed.
        device: Where to train.
        val_set: Validation split scored after every epoch when given.
        writer: TensorBoard writer.
        progress: Show progress bars.
        log_every: Steps between TensorBoard points.
        val_batches: Validation batches per epoch (``None``: all).

    Returns:
        ``{"gate_predictor": {"epochs": [...], "time_s": ...}, "gate_static": {...}}`` (see :func:`train`).

    Raises:
        ValueError: ``model`` is not gated.
    """
    _require_gated(model)
    stages = gate_schedule(
        predictor_epochs=predictor_epochs, static_epochs=static_epochs, lr=lr, batch_size=batch_size,
        weight_decay=weight_decay, grad_clip=grad_clip, seed=seed, device=device, log_every=log_every,
        val_batches=val_batches,
    )  # fmt: skip
    _, history = fit_schedule(model, stages, train_set, val_set=val_set, writer=writer, progress=progress)
    return history
