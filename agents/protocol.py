"""The fair protocol: learned vs hand-designed pruning at equal MACs and equal training (``prunegym protocol``).

A claim "policy A beats policy B" holds only inside one **cell**: one model, one base checkpoint, one MAC
budget ``B`` (a fraction of the base model's MACs per image), one training budget ``E`` (epochs) and one seed.
Every **row** of a cell (one pruning policy) is held to the same rules:

* **Same start, same data.** Every row starts from the same base checkpoint. Training uses the ``train``
  split; ``val`` serves only for rewards, model selection and budget bisection; ``test`` (the whole split
  unless ``test_images`` says otherwise) only for the final score.
* **Same training.** Exactly ``E`` epochs of CNN training (fractions allowed:
  :func:`pruning.train.fractional_epochs`), counting every optimizer step that changes CNN or predictor
  weights, with one recipe (:class:`Recipe`): SGD, Nesterov momentum 0.9, weight decay 1e-4, peak learning
  rate 0.01 (configurable, the same for every row) cosine-annealed over the row's whole ``E``, batch 128, the
  standard augmentation (random 32×32 crop of the 4-pixel padded image, horizontal flip). The hand-designed
  rows train through :func:`agents.compare.finetune`; the learned rows through the joint schedule, whose gate
  stage and CNN phases add up to ``E`` (:func:`split_epochs`). Each row records the optimizer steps, the
  images they saw and the learning rate of its first and last step.
* **Same budget.** A row meets the budget when its mean per-image MAC fraction on the test images is at most
  ``B + BUDGET_TOLERANCE``. The mean, the largest per-image fraction and the stored parameter fraction are
  reported. A row that misses (or cannot be built at ``B`` at all) is kept with ``meets_budget: false``,
  listed under the table as missing its budget, and never ranked.
* **Wall time** of training is recorded, and the RL time of the learned rows apart.

Rows (:func:`list_rows`; add one with :func:`register_row`, a function ``row(ctx) -> RowResult``):

=====================  ===================================================================================
``l1``                 static L1 filter-norm pruning, one keep ratio for every unit (the ``l1`` baseline
                       of :mod:`agents.baselines`, budget solved as :mod:`agents.compare` does), then ``E``
                       epochs of fine-tuning of the sliced model
``hand:<name>``        the same for each hand-designed static baseline: ``l1``, ``l2``, ``l2_gm`` (FPGM),
                       ``neuron_merging``, ``pfp``, ``random``; ``best_hand`` is the best of them by test
                       top-1 among those meeting the budget (:func:`best_hand`)
``fbs``                the gated model (:func:`pruning.gating.gate_model`) with one runtime keep ratio for
                       every unit and image, bisected on ``val`` so the mean MAC fraction meets ``B`` (before
                       and after training), CNN and predictors trained ``E`` epochs under that ratio
``static_agent``       the learned rows: :class:`agents.schedule.JointTrainer` in ``static``, ``runtime``
``runtime_agent``      and ``joint`` (R_r = 0.5) mode, its gate stage + rounds × CNN phases summing to ``E``,
``joint``              its plan brought to the budget on ``val`` (``guard_budget``) before the test score;
``runtime_prefix``     ``runtime_prefix`` is ``runtime_agent`` with the prefix runtime order (each image keeps
                       the first k channels of one fixed order: contiguous slices after export)
=====================  ===================================================================================

**Results** go to ``<out_dir>/<cell>/<row>.json`` (cell names like ``resnet20_e1_b050_s0``; ``:`` in a row
name becomes ``-`` in its file name), each written atomically (temp file + ``os.replace``) when the row is
done. A later call reuses every finished row whose settings match (and refuses one whose settings differ,
naming the fix); ``rerun`` redoes the rows it names. A row interrupted before its file was written (a kill
leaves at most a ``.tmp`` file) is simply run again; a learned row resumes its schedule from the checkpoint in
``<out_dir>/<cell>/runs/<row>/``.

Python::

    from agents.protocol import run_protocol, format_table, best_hand
    rows = run_protocol(model="resnet20", weights="resnet20_cifar10jpeg.pt", data_dir="data/cifar10",
                        budgets=[0.5], epochs=[1.0], seeds=[0, 1], out_dir="runs/protocol")
    print(format_table(rows))

Command line: ``prunegym protocol --model resnet20 --weights W.pt --budgets 0.5 --epochs 1 --seeds 0 1``
(``bench/protocol_cifar10.py`` runs the CIFAR-10 grid and writes ``docs/results.md``).
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import functools
import hashlib
import json
import logging
import math
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from agents.baselines import TrainContext, TrainedBaseline, get_baseline
from agents.compare import _Bench, _run_static, draw_pareto, finetune, parse_policy
from agents.schedule import BUDGET_TOLERANCE, RUNTIME_MIN_KEEP, ScheduleConfig
from pruning.accounting import CostModel
from pruning.budget import bisect_monotone
from pruning.cli import HelpFormatter
from pruning.data import ImageDataset
from pruning.gating import clear_plan, gate_model, set_plan
from pruning.methods.channel_gating import measure_gating
from pruning.plan import PruningPlan
from pruning.registry import Registry
from pruning.runs import UsageError, write_json
from pruning.train import evaluate, fractional_epochs, seed_everything

__all__ = [
    "BUDGET_TOLERANCE",
    "DEFAULT_ROWS",
    "GATE_SHARE",
    "HAND_POLICIES",
    "LEARNED_ROWS",
    "BudgetUnreachable",
    "Cell",
    "LearnedSettings",
    "Recipe",
    "RowContext",
    "RowResult",
    "RowSpec",
    "SEED_METHODS",
    "SEED_SHARE",
    "SEED_VARIANTS",
    "best_hand",
    "best_learned",
    "fbs_row",
    "format_table",
    "learned_row",
    "load_learned_row",
    "list_rows",
    "main",
    "pareto_plot",
    "read_cell",
    "register_row",
    "row_path",
    "row_run_dir",
    "run_protocol",
    "seed_method_row",
    "split_epochs",
    "static_row",
    "summary_line",
    "uniform_runtime_ratio",
]

log = logging.getLogger(__name__)

#: Share of a learned row's ``E`` given to the gate stage; the rest is split evenly over the CNN phases.
GATE_SHARE = 0.2
#: R_r of the ``joint`` row (Chen, Chen & Pan's setting).
JOINT_TRADEOFF = 0.5
#: Validation images the ``fbs`` row bisects its ratio on (evenly strided over the split).
PROBE_IMAGES = 1000
#: Bisection steps of the ``fbs`` ratio (keep counts are a step function: 12 resolve units of 4 096 channels).
RATIO_HALVINGS = 12
#: The static hand-designed baselines of the ``hand:<name>`` rows.
HAND_POLICIES = ("l1", "l2", "l2_gm", "neuron_merging", "pfp", "random")
#: The learned rows and the schedule mode each runs.
LEARNED_ROWS = {"static_agent": "static", "runtime_agent": "runtime", "runtime_prefix": "runtime", "joint": "joint"}
#: Learned rows whose runtime keep counts take a prefix of a fixed channel order instead of each image's top-k by
#: ``u_r`` (:attr:`agents.schedule.ScheduleConfig.runtime_order`): the same agent, sliceable after export.
PREFIX_ROWS = frozenset({"runtime_prefix"})
#: The training-based methods of the ``seed:<name>`` rows and the options each runs with under the protocol:
#: every one is brought to the budget (polarization: its (λ, t) search, then its first-valley cut completed by |γ|
#: rank, ``agents.baselines.polarization``; gRDA prunes at one global threshold set at the budget after its
#: training; SCOP and Channel Gating solve their rate for it; Channel Gating gates the consumer convs
#: too, since gating only a ResNet block's first conv cannot go below ~0.65 of ResNet-20's MACs).
SEED_METHODS: dict[str, dict[str, Any]] = {
    "polarization": {"search": True, "tolerance": 0.02, "max_trials": 4, "meet_budget": True},
    "grda": {"meet_budget": True},
    "scop": {},
    "channel_gating": {"consumers": True},
}
#: Variants of a seed method, rows ``seed:<variant>`` outside :data:`DEFAULT_ROWS`: ``variant -> (method, the
#: options that replace its SEED_METHODS entry)``. SCOP's default draws its Gaussian controls independently of
#: each image (better on val: :mod:`pruning.methods.scop`); ``scop_conditional`` runs the model-X knockoffs.
SEED_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "scop_conditional": ("scop", {"conditional_knockoffs": True}),
}
#: Share of ``E`` a static seed method spends in its own training (sparsity, gRDA, control factors); the rest
#: is the recipe's fine-tune of the sliced model. Channel Gating trains its gated model for all of ``E``.
SEED_SHARE = 0.5
#: Every row, in table order (what :func:`run_protocol` runs when ``rows`` is not given).
DEFAULT_ROWS = (
    "l1",
    *(f"hand:{name}" for name in HAND_POLICIES),
    "fbs",
    *LEARNED_ROWS,
    *(f"seed:{n}" for n in SEED_METHODS),
)
ROW_FORMAT = "prunegym.protocol.row.v1"
_RUNS_DIR = "runs"


# ----------------------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------------------


class BudgetUnreachable(ValueError):
    """A row's policy cannot be built at the cell's budget (e.g. below the MACs its floor keeps).

    A row function raises it to be recorded as a row that misses its budget, with the message; any other
    error stops :func:`run_protocol` (the rows finished so far are kept).
    """


@dataclass(frozen=True)
class Recipe:
    """The one training recipe of every row: SGD, Nesterov momentum 0.9, weight decay 1e-4, cosine, augmentation.

    The peak learning rate, the batch size and the optional distillation are settings; they are the same for every
    row of a call.
    """

    lr: float = 0.01
    """Peak learning rate (the first step's), cosine-annealed per step to 0 over the row's ``E`` epochs."""
    batch_size: int = 128
    """Images per optimizer step."""
    distill: float = 0.0
    """Knowledge distillation from the unpruned base model in every CNN-training step of every row (baselines'
    fine-tunes, FBS, every phase of the learned rows): the weight ``α`` of
    :func:`pruning.train.distillation_loss` (Hinton et al., 2015). 0: labels only."""
    distill_temperature: float = 4.0
    """Its softmax temperature."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"the learning rate must be a positive number, got {self.lr}; pass e.g. --lr 0.01")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if not (math.isfinite(self.distill) and 0.0 <= self.distill <= 1.0):
            raise ValueError(f"distill must be a weight in [0, 1], got {self.distill}; pass e.g. --distill 0.5")
        if not (math.isfinite(self.distill_temperature) and self.distill_temperature > 0):
            raise ValueError(f"distill_temperature must be positive, got {self.distill_temperature}")

    def as_dict(self) -> dict[str, Any]:
        """Every hyperparameter of the recipe, fixed ones included (what each row file records).

        The distillation entries appear only when it is on, so a row trained on labels alone keeps one record
        whichever version of the recipe wrote it.
        """
        out = {
            "optimizer": "sgd", "nesterov": True, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "cosine",
            "lr": self.lr, "batch_size": self.batch_size, "augmentation": "pad-4 random crop + horizontal flip",
        }  # fmt: skip
        if self.distill > 0:
            out.update(distill=self.distill, distill_temperature=self.distill_temperature, teacher="the base model")
        return out


@dataclass(frozen=True)
class LearnedSettings:
    """How the learned rows train their agents (the CNN side follows :class:`Recipe` and ``E``).

    The defaults: PPO for both agents with the YAML hyperparameters of :mod:`agents.hyperparams`, and the
    schedule's own defaults (:class:`agents.schedule.ScheduleConfig`'s fields of the same names): two rounds
    of 40 000 runtime timesteps, and 1 800 static timesteps (200 episodes of a ResNet-20's 9 units; a deeper
    net's episodes are longer: size ``static_steps`` in episodes × units, as ``bench/protocol_cifar10.py`` does).
    """

    algo: str = "ppo"
    """Algorithm of the agents (a registered name or ``package.module:Class``)."""
    static_algo: str | None = None
    """Algorithm of the static agent (``None``: :attr:`algo`)."""
    hyperparams: tuple[str, ...] = ()
    """``key=value`` overrides (``runtime.`` / ``static.`` prefixes for one agent), as ``--hyperparams``."""
    preset: str | None = None
    """Hyperparameter preset of the YAML files (e.g. ``paper``)."""
    rounds: int = ScheduleConfig.rounds
    """Repeats of {RL phase, CNN phase}."""
    runtime_steps: int = ScheduleConfig.runtime_steps
    """Runtime-agent timesteps per RL phase."""
    static_steps: int = ScheduleConfig.static_steps
    """Static-agent timesteps per RL phase (one timestep per unit: an episode is one pass over the units)."""
    n_envs: int = ScheduleConfig.n_envs
    """Images per runtime-env batch."""
    num_val: int = ScheduleConfig.num_val
    """Validation images the static env scores per episode."""
    static_select: int = ScheduleConfig.static_select
    """Best-rewarded static episodes re-scored against the deterministic one for the static plan
    (:attr:`agents.schedule.ScheduleConfig.static_select`; 0: the deterministic episode)."""
    static_min_keep: float | None = ScheduleConfig.static_min_keep
    """The static agent's keep floor (:attr:`agents.schedule.ScheduleConfig.static_min_keep`; ``None``:
    ``min(0.2, B / 2)``)."""

    def __post_init__(self) -> None:
        if self.static_min_keep is not None and not (
            math.isfinite(self.static_min_keep) and 0.0 < self.static_min_keep <= 1.0
        ):
            raise ValueError(f"static_min_keep must be a keep ratio in (0, 1], got {self.static_min_keep}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        for key in ("runtime_steps", "static_steps", "static_select"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        for key in ("n_envs", "num_val"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)}")


def _code(value: float, scale: float = 1.0, width: int = 0) -> str:
    """``1.0 -> "1"``, ``0.5 -> "0p5"``; with ``scale=100, width=3``: ``0.5 -> "050"``, ``0.125 -> "012p5"``."""
    scaled = round(value * scale, 6)
    if scaled == int(scaled):
        return f"{int(scaled):0{width}d}"
    whole, frac = f"{scaled:.6f}".rstrip("0").split(".")
    return f"{int(whole):0{width}d}p{frac}"


@dataclass(frozen=True)
class Cell:
    """One comparison: model, base checkpoint, MAC budget ``B``, training budget ``E`` (epochs) and seed.

    Attributes:
        model: Registered model name.
        weights: Its base checkpoint (``"DEFAULT"``, a path, or ``None`` for the seed-0 initialisation).
        budget: ``B``, the MAC budget as a fraction of the base model's MACs per image.
        epochs: ``E``, epochs of CNN training every row gets.
        seed: Seeds the policies that draw (random, PFP), the data order, the augmentation and the agents.
    """

    model: str
    weights: str | None
    budget: float
    epochs: float
    seed: int

    @property
    def group(self) -> str:
        """The cell's name without the seed (rows of one group differ only by seed), e.g. ``resnet20_e1_b050``."""
        return f"{self.model}_e{_code(self.epochs)}_b{_code(self.budget, 100, 3)}"

    @property
    def name(self) -> str:
        """The cell's folder name, e.g. ``resnet20_e1_b050_s0``."""
        return f"{self.group}_s{self.seed}"


def split_epochs(epochs: float, rounds: int) -> tuple[float, float]:
    """Split a learned row's training budget ``E`` into the gate stage and ``rounds`` equal CNN phases.

    The gate stage gets :data:`GATE_SHARE` of ``E``, each CNN phase ``(1 - GATE_SHARE)·E / rounds``, so
    ``gate + rounds × cnn == E`` (checked).

    Args:
        epochs: ``E``, ``>= 0``.
        rounds: CNN phases of the schedule, ``>= 1``.

    Returns:
        ``(gate_epochs, cnn_epochs)``.

    Raises:
        ValueError: ``epochs`` negative or not finite, or ``rounds < 1``.
    """
    if not (math.isfinite(epochs) and epochs >= 0):
        raise ValueError(f"epochs must be a finite number >= 0, got {epochs}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    gate = GATE_SHARE * epochs
    cnn = (epochs - gate) / rounds
    assert math.isclose(gate + rounds * cnn, epochs, rel_tol=1e-12, abs_tol=1e-12), (gate, cnn, rounds, epochs)
    return gate, cnn


# ----------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------


@dataclass
class RowResult:
    """One row of one cell, as its JSON file stores it.

    Attributes:
        row: Registered row name (``"l1"``, ``"hand:pfp"``, ``"joint"``, ...).
        policy: What the row ran, for the table (``"l1 uniform"``, ``"fbs r=0.531"``, ``"joint ppo R_r=0.5"``).
        kind: ``"static"``, ``"runtime"`` or ``"learned"``.
        hand: Whether the row is a hand-designed candidate for ``best_hand``.
        cell: The cell's name (:attr:`Cell.name`); ``group`` is it without the seed.
        group: :attr:`Cell.group`.
        model: Model name.
        budget: ``B``.
        epochs: ``E``.
        seed: The cell's seed.
        test_top1: Top-1 (%) on the test images (``nan`` when the row could not be built).
        mac_fraction: Mean per-image backbone MAC fraction on the test images.
        mac_fraction_max: Largest per-image MAC fraction.
        params_fraction: Stored backbone parameters as a fraction of the base model's (runtime predictors are
            overhead, in ``extra`` where measured).
        meets_budget: ``mac_fraction <= budget + BUDGET_TOLERANCE``.
        train_steps: Optimizer steps that changed CNN or predictor weights.
        train_images: Images those steps saw (``E`` epochs = ``E × len(train)``, up to rounding per phase).
        train_epochs: ``train_images / len(train)``.
        lr_first: Learning rate of the first step (``nan`` where not recorded).
        lr_last: Learning rate of the last step.
        train_seconds: Wall time of CNN training.
        rl_seconds: Wall time of the RL phases (learned rows; 0 otherwise).
        test_images: Images scored.
        recipe: The training recipe the row ran with.
        settings: What must match for a later call to reuse the row.
        seconds: Wall time of the whole row.
        error: Why the row could not be built (``None`` when it was).
        extra: Row-specific details (keep ratios, bisected ratios, the budget guard's record, ...).
    """

    row: str
    policy: str
    kind: str
    hand: bool
    cell: str
    group: str
    model: str
    budget: float
    epochs: float
    seed: int
    test_top1: float = math.nan
    mac_fraction: float = math.nan
    mac_fraction_max: float = math.nan
    params_fraction: float = math.nan
    meets_budget: bool = False
    train_steps: int = 0
    train_images: int = 0
    train_epochs: float = 0.0
    lr_first: float = math.nan
    lr_last: float = math.nan
    train_seconds: float = 0.0
    rl_seconds: float = 0.0
    test_images: int = 0
    recipe: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, with the file format tag."""
        return {"format": ROW_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RowResult:
        """Rebuild a row from :meth:`to_dict`'s output.

        Raises:
            ValueError: not a protocol row, or fields are missing.
        """
        if data.get("format") != ROW_FORMAT:
            raise ValueError(f"not a protocol row (format {data.get('format')!r}, expected {ROW_FORMAT!r})")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise ValueError(f"protocol row without {', '.join(missing)}")
        return cls(**{n: data[n] for n in names})


def row_path(cell_dir: str | Path, row: str) -> Path:
    """Where row ``row`` of the cell in ``cell_dir`` is stored (``:`` becomes ``-``: ``hand:l1 -> hand-l1.json``)."""
    return Path(cell_dir) / f"{row.replace(':', '-')}.json"


def row_run_dir(runs_root: str | Path, cell: str, row: str) -> Path:
    """The run folder (checkpoints) of learned row ``row`` of ``cell``: ``<runs_root>/<cell>/runs/<row>``."""
    return Path(runs_root) / cell / _RUNS_DIR / row.replace(":", "-")


def _read_row(path: Path) -> RowResult | None:
    """The finished row in ``path``, or ``None`` when there is none (absent, cut short or not a row)."""
    if not path.is_file():
        return None
    try:
        return RowResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as err:  # json.JSONDecodeError is a ValueError
        log.warning("%s is not a finished row (%s); it is run again", path, err)
        return None


def read_cell(out_dir: str | Path, cell: str) -> list[RowResult]:
    """Every finished row of cell ``cell`` under ``out_dir`` (in :data:`DEFAULT_ROWS` order, then by name)."""
    folder = Path(out_dir) / cell
    rows = [r for p in sorted(folder.glob("*.json")) if (r := _read_row(p)) is not None] if folder.is_dir() else []
    order = {name: i for i, name in enumerate(DEFAULT_ROWS)}
    return sorted(rows, key=lambda r: (order.get(r.row, len(order)), r.row))


def _meets(mac_fraction: float, budget: float) -> bool:
    return bool(math.isfinite(mac_fraction) and mac_fraction <= budget + BUDGET_TOLERANCE)


# ----------------------------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------------------------


@dataclass
class RowContext:
    """What a row function gets: the cell, the recipe, the shared data and models, and helpers.

    Attributes:
        row: The name of the row being run.
        kind: Its kind (:attr:`RowSpec.kind`).
        cell: The cell.
        recipe: The training recipe.
        learned: Settings of the learned rows' agents.
        cell_dir: The cell's result folder (its row files).
        runs_root: Where the learned rows' run folders go (``<runs_root>/<cell>/runs/<row>``).
        device: Where models run.
        progress: Show progress bars.
        bench: :mod:`agents.compare`'s shared state for one base model (the plain base model, the splits,
            the static envs), the same one :func:`agents.compare.compare` uses.
    """

    row: str
    kind: str
    cell: Cell
    recipe: Recipe
    learned: LearnedSettings
    cell_dir: Path
    runs_root: Path
    device: str
    progress: bool
    bench: _Bench

    def base(self) -> nn.Module:
        """The plain base model (shared: copy it before changing it)."""
        return self.bench.plain(self.row)

    def train_set(self, model: nn.Module) -> ImageDataset:
        """The training split, normalised for ``model``."""
        return self.bench.split("train", model)

    def val_set(self, model: nn.Module) -> ImageDataset:
        """The validation split (rewards, model selection, budget bisection), normalised for ``model``."""
        return self.bench.split("val", model)

    def test_set(self, model: nn.Module) -> ImageDataset:
        """The test images of the final score (the whole split unless ``test_images``), normalised for ``model``."""
        return self.bench.test_set(model)

    def finetune(self, model: nn.Module, epochs: float | None = None) -> dict[str, Any]:
        """Train ``model`` in place with the recipe for ``epochs`` (default the cell's ``E``); return what it did.

        Returns:
            :func:`agents.compare.finetune`'s record (steps, images, learning rates, seconds).
        """
        return finetune(
            model, self.train_set(model), self.cell.epochs if epochs is None else epochs, lr=self.recipe.lr,
            batch_size=self.recipe.batch_size,
            seed=self.cell.seed, device=self.device, desc=f"{self.row} {self.cell.name}", teacher=self.teacher(),
            distill=self.recipe.distill, distill_temperature=self.recipe.distill_temperature,
        )  # fmt: skip

    def train_context(self, epochs: float) -> TrainContext:
        """What a training-based method gets for ``epochs`` of its own training in this cell (distillation included)."""
        base = self.base()
        return TrainContext(
            train_set=self.train_set(base), val_set=self.val_set(base), budget=self.cell.budget, seed=self.cell.seed,
            epochs=epochs, device=self.device, progress=self.progress, teacher=self.teacher(),
            distill=self.recipe.distill, distill_temperature=self.recipe.distill_temperature,
        )  # fmt: skip

    def teacher(self) -> nn.Module | None:
        """The model every row distils from when :attr:`Recipe.distill` is on (the plain base), else ``None``."""
        return self.base() if self.recipe.distill > 0 else None

    def run_dir(self) -> Path:
        """A folder of the row's own (checkpoints of a learned row's schedule)."""
        return row_run_dir(self.runs_root, self.cell.name, self.row)

    def result(
        self,
        *,
        policy: str,
        test: Mapping[str, float],
        params_fraction: float,
        training: Mapping[str, Any] | None = None,
        rl_seconds: float = 0.0,
        recipe: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> RowResult:
        """A :class:`RowResult` for this row and cell.

        Args:
            policy: What the row ran (the table's policy column).
            test: The test score: ``top1``, ``macs_fraction`` (mean per image), ``macs_fraction_max`` and ``n``.
            params_fraction: Stored backbone parameters as a fraction of the base model's.
            training: The training record (``steps``, ``images``, ``seconds``, ``lr_first``, ``lr_last``), as
                :meth:`finetune` returns it.
            rl_seconds: Wall time of the RL phases.
            recipe: The recipe the row trained with (default: :attr:`recipe`).
            extra: Row-specific details (plain values).
        """
        t = dict(training or {})
        n_train = len(self.bench.split("train", self.base()))
        mean = float(test["macs_fraction"])
        return RowResult(
            row=self.row, policy=policy, kind=self.kind, hand=False, cell=self.cell.name, group=self.cell.group,
            model=self.cell.model, budget=self.cell.budget, epochs=self.cell.epochs, seed=self.cell.seed,
            test_top1=float(test["top1"]), mac_fraction=mean, mac_fraction_max=float(test["macs_fraction_max"]),
            params_fraction=float(params_fraction), meets_budget=_meets(mean, self.cell.budget),
            train_steps=int(t.get("steps", 0)), train_images=int(t.get("images", 0)),
            train_epochs=int(t.get("images", 0)) / n_train, lr_first=float(t.get("lr_first", math.nan)),
            lr_last=float(t.get("lr_last", math.nan)), train_seconds=float(t.get("seconds", 0.0)),
            rl_seconds=float(rl_seconds), test_images=int(test["n"]),
            recipe=dict(recipe if recipe is not None else self.recipe.as_dict()), extra=dict(extra or {}),
        )  # fmt: skip


@dataclass(frozen=True)
class RowSpec:
    """A registered row.

    Attributes:
        name: The row name.
        fn: ``fn(ctx) -> RowResult``.
        kind: ``"static"``, ``"runtime"`` or ``"learned"`` (the table and the summary line count learned rows).
        hand: Whether it is a hand-designed candidate of ``best_hand``.
        same_as: Another row computing exactly the same thing: when that one is finished in the cell, this
            one is its copy (``hand:l1`` is ``l1``).
    """

    name: str
    fn: Callable[[RowContext], RowResult]
    kind: str = "static"
    hand: bool = False
    same_as: str | None = None


_ROWS: Registry[RowSpec] = Registry("protocol row")


def register_row(
    name: str, *, kind: str = "static", hand: bool = False, same_as: str | None = None
) -> Callable[[Callable[[RowContext], RowResult]], Callable[[RowContext], RowResult]]:
    """Register a row function ``fn(ctx: RowContext) -> RowResult`` as ``name`` (a decorator).

    The function builds and trains its model within the cell's rules (``ctx.finetune`` trains with the
    recipe for ``E`` epochs; ``ctx.val_set`` for anything chosen on data, ``ctx.test_set`` for the score)
    and returns ``ctx.result(...)``. A :class:`BudgetUnreachable` it raises becomes a row that misses its
    budget, with the message; any other error propagates.

    Args:
        name: The row name (``hand:<x>`` by convention for hand-designed policies).
        kind: ``"static"``, ``"runtime"`` or ``"learned"``.
        hand: A candidate of ``best_hand``.
        same_as: A row that computes the same thing (see :class:`RowSpec`).

    Raises:
        ValueError: ``name`` is taken.
    """

    def wrapper(fn: Callable[[RowContext], RowResult]) -> Callable[[RowContext], RowResult]:
        _ROWS.add(name, RowSpec(name, fn, kind=kind, hand=hand, same_as=same_as))
        return fn

    return wrapper


def list_rows() -> list[str]:
    """Registered rows: :data:`DEFAULT_ROWS` first, in table order, then any others by name."""
    return [n for n in DEFAULT_ROWS if n in _ROWS] + [n for n in _ROWS.names() if n not in DEFAULT_ROWS]


def static_row(ctx: RowContext, spec: str, *, budget: float | None = None) -> RowResult:
    """A static hand-designed policy: pruned as :func:`agents.compare.compare` prunes, then ``E`` epochs.

    The policy spec (:func:`agents.compare.parse_policy`, e.g. ``"l1"``, ``"neuron_merging:criterion=l2_gm"``)
    solves its keep counts for the budget exactly on the static env's cost model, its channels are sliced
    (or merged), and the pruned model is fine-tuned with the recipe. Its MAC fraction is that of the exported
    model, the same for every image. ``extra["val_top1"]`` is the trained model's top-1 on the whole ``val``
    split, so a recipe setting (the learning rate, say) can be chosen without looking at the test split.

    Args:
        ctx: The row context.
        spec: The policy spec (a static baseline).
        budget: The MAC budget the policy aims at (default: the cell's).

    Raises:
        ValueError: not a static policy.
        BudgetUnreachable: the budget is below what the policy can reach (the solver says so before any
            training).
    """
    policy = parse_policy(spec)
    if policy.kind != "static":
        raise ValueError(f"static_row takes a static baseline, {spec!r} is a {policy.kind} policy")
    record: dict[str, Any] = {}

    def tune(model: nn.Module, seed: int, label: str) -> None:
        record.update(ctx.finetune(model))

    try:
        res = _run_static(ctx.bench, policy, ctx.cell.budget if budget is None else budget, ctx.cell.seed, tune)
    except ValueError as err:
        if record:  # trained already: not a budget the solver refused
            raise
        raise BudgetUnreachable(str(err)) from err
    test = evaluate(res.model, ctx.test_set(res.model))
    test.update(macs_fraction=res.mac_fraction, macs_fraction_max=res.mac_fraction)
    val_top1 = float(evaluate(res.model, ctx.val_set(res.model))["top1"])  # for recipe choices made on val
    name = f"{spec} {getattr(policy.build(ctx.cell.seed), 'allocation', '')}".strip()
    return ctx.result(
        policy=name, test=test, params_fraction=res.params_fraction, training=record,
        extra={"keep_ratios": res.keep_ratios, "val_top1": val_top1, **res.info},
    )  # fmt: skip


def uniform_runtime_ratio(
    model: nn.Module, cost_model: CostModel, data: ImageDataset, target: float, *, halvings: int = RATIO_HALVINGS
) -> float:
    """The largest uniform runtime keep ratio whose measured mean MAC fraction on ``data`` is at most ``target``.

    One ratio for every unit and image (``PruningPlan(runtime_keep=r, tradeoff=1.0)``), bisected on
    ``[RUNTIME_MIN_KEEP, 1]``; the model's plan is cleared afterwards. When even the floor costs more than
    ``target`` the floor is returned (the row then misses its budget and says so).

    Args:
        model: The gated model.
        cost_model: Its :class:`pruning.accounting.CostModel` (built without a plan).
        data: Validation images, normalised for ``model``.
        target: The MAC budget.
        halvings: Bisection steps.
    """

    def macs(ratio: float) -> float:
        clear_plan(model)
        set_plan(model, PruningPlan(runtime_keep=ratio, tradeoff=1.0))
        try:
            return float(evaluate(model, data, cost_model=cost_model)["macs_fraction"])
        finally:
            clear_plan(model)

    return bisect_monotone(lambda ratio: macs(ratio) <= target, RUNTIME_MIN_KEEP, 1.0, steps=halvings)


def fbs_row(ctx: RowContext) -> RowResult:
    """FBS-style runtime pruning: one runtime keep ratio for every unit and image, trained ``E`` epochs.

    Feature Boosting and Suppression (Gao, Zhao, Dudziak, Mullins & Xu, "Dynamic Channel Pruning: Feature
    Boosting and Suppression", ICLR 2019) keeps the top-k channels of each unit per image by a predictor
    ``u_r = Linear(GAP(x))`` at one constant ratio. The base model is gated with fresh predictors (``u_r = γ``),
    the ratio bisected on ``val`` (:func:`uniform_runtime_ratio`, :data:`PROBE_IMAGES` images) so the mean
    MAC fraction meets the budget, the CNN and its predictors trained ``E`` epochs under that ratio, the ratio
    bisected again on the trained model, and the test images scored with every image costed from its masks.
    """
    model = gate_model(copy.deepcopy(ctx.base()), predictor=True).to(ctx.device)
    cost_model = CostModel(model)
    probe = ctx.val_set(model).strided(PROBE_IMAGES)
    budget = ctx.cell.budget
    before = uniform_runtime_ratio(model, cost_model, probe, budget)
    set_plan(model, PruningPlan(runtime_keep=before, tradeoff=1.0))
    try:
        training = ctx.finetune(model)
    finally:
        clear_plan(model)
    after = uniform_runtime_ratio(model, cost_model, probe, budget)
    set_plan(model, PruningPlan(runtime_keep=after, tradeoff=1.0))
    try:
        test = evaluate(model, ctx.test_set(model), cost_model=cost_model)
        full = cost_model.from_counts(cost_model.channels, cost_model.channels)  # predictors are always stored
    finally:
        clear_plan(model)
    return ctx.result(
        policy=f"fbs r={after:.3f}", test=test, params_fraction=test["params_fraction"],
        training=training,
        extra={
            "ratio_before_training": before, "ratio": after, "probe_images": len(probe),
            "predictor_params_fraction": full.predictor_params / full.base_params,
        },
    )  # fmt: skip


def seed_method_row(ctx: RowContext, name: str) -> RowResult:
    """A training-based seed method (:data:`SEED_METHODS`, or a :data:`SEED_VARIANTS` variant) inside the cell's ``E``.

    The static methods (polarization, gRDA, SCOP) run their own training for ``SEED_SHARE·E`` epochs with
    their own optimizer (it is part of the method: gRDA *is* an optimizer, SCOP trains its control factors
    with Adam, polarization trains with SGD at a constant rate), starting from the base; the model they
    slice is then fine-tuned with the recipe for the remaining ``(1 − SEED_SHARE)·E``. Channel Gating trains
    its gated model for all of ``E`` with SGD, Nesterov, cosine from the recipe's learning rate (the
    recipe, plus its threshold loss). Distillation, when on, applies to every weight-training step (not to
    SCOP's control factors, which change no CNN weight). The row's training record adds the method's steps
    (of the trained copy that is kept; a search's other trials are recorded in ``extra["search_images"]``,
    not counted: like the RL episodes of the learned rows they change no weight that is kept) to the
    fine-tune's. MACs: the exported model's for the static methods; Channel Gating's mean and maximum per
    image from the gates each test image used (:func:`pruning.methods.channel_gating.measure_gating`).
    """
    base = ctx.base()
    epochs = ctx.cell.epochs
    method_name, variant = SEED_VARIANTS.get(name, (name, {}))
    dynamic = method_name == "channel_gating"
    share = 1.0 if dynamic else SEED_SHARE
    options = {**SEED_METHODS[method_name], **variant}
    if dynamic:
        options["lr"] = ctx.recipe.lr
    method = get_baseline(method_name, budget=ctx.cell.budget, **options)
    assert isinstance(method, TrainedBaseline)
    context = ctx.train_context(share * epochs)
    train_set = context.train_set
    try:
        built = method.build(base, context)
    except ValueError as err:
        if "budget" in str(err):
            raise BudgetUnreachable(str(err)) from err
        raise
    subset, whole = fractional_epochs(train_set, share * epochs, seed=ctx.cell.seed)
    batch = int(getattr(method, "batch_size", ctx.recipe.batch_size))
    method_images = whole * len(subset)
    trials = built.info.get("trials") or [None]
    record: dict[str, Any] = {
        "steps": whole * -(-len(subset) // batch), "images": method_images, "seconds": built.train_seconds,
        "lr_first": float(getattr(method, "lr", math.nan)),
        # the static methods train at a constant rate; Channel Gating's cosine ends near 0 (its last rate unlogged)
        "lr_last": math.nan if dynamic else float(getattr(method, "lr", math.nan)),
    }  # fmt: skip
    if share < 1.0:
        tune = ctx.finetune(built.model, epochs=(1.0 - share) * epochs)
        record.update(
            steps=record["steps"] + int(tune.get("steps", 0)), images=method_images + int(tune.get("images", 0)),
            seconds=record["seconds"] + float(tune.get("seconds", 0.0)), lr_last=tune.get("lr_last", math.nan),
        )  # fmt: skip
    model = built.model.eval()
    test_set = ctx.test_set(model)
    test = dict(evaluate(model, test_set))
    if dynamic:
        gating = measure_gating(model, test_set, base_macs=CostModel(base).base_macs)
        test.update(macs_fraction=gating.macs_fraction, macs_fraction_max=gating.macs_fraction_max)
    else:
        test.update(macs_fraction=built.macs_fraction, macs_fraction_max=built.macs_fraction)
    info = {k: v for k, v in built.info.items() if k not in ("gate_rates",)}
    extra = {
        "method_epochs": share * epochs, "finetune_epochs": (1.0 - share) * epochs, "method_lr": record["lr_first"],
        "search_images": method_images * len(trials), "keep_ratios": built.keep_ratios,
        "val_top1": float(evaluate(model, ctx.val_set(model))["top1"]), **info,
    }  # fmt: skip
    return ctx.result(
        policy=f"{name} ({share:g}·E own training{'' if dynamic else ' + fine-tune'})", test=test,
        params_fraction=built.params_fraction, training=record, extra=extra,
    )  # fmt: skip


def _first_logged_lr(progress_csv: Path) -> float:
    """The first CNN-training learning rate a run logged (``gate/.../train/lr``, ``cnn/train/lr``), else ``nan``."""
    if not progress_csv.is_file():
        return math.nan
    with progress_csv.open(newline="", encoding="utf-8") as f:
        for record in csv.DictReader(f):
            for key, value in record.items():
                if key and key.startswith(("gate/", "cnn/")) and key.endswith("/train/lr") and value:
                    return float(value)
    return math.nan


def _schedule_training(trainer: Any, train_set: ImageDataset, batch_size: int) -> dict[str, Any]:
    """Steps, images, seconds and the first and last learning rates of a finished schedule's CNN training."""
    steps = images = 0
    seconds = rl_seconds = 0.0
    lr_last = math.nan
    for phase in trainer.phases:
        record = trainer.history.get(phase.name, {})
        if phase.is_rl:
            rl_seconds += float(record.get("time_s", 0.0))
            continue
        subset, _ = fractional_epochs(train_set, phase.length)  # its size does not depend on the seed
        epochs = record.get("epochs", [])
        images += len(epochs) * len(subset)
        steps += int(record.get("steps", len(epochs) * -(-len(subset) // batch_size)))
        seconds += float(record.get("time_s", 0.0))
        if epochs:
            lr_last = float(epochs[-1]["lr"])
    lr_first = _first_logged_lr(trainer.run_dir / "progress.csv")
    return {
        "steps": steps, "images": images, "seconds": seconds, "lr_first": lr_first, "lr_last": lr_last,
        "rl_seconds": rl_seconds,
    }  # fmt: skip


def learned_row(ctx: RowContext, mode: str, runtime_order: str = "u_r") -> RowResult:
    """A learned row: the joint schedule (:class:`agents.schedule.JointTrainer`) in ``mode``, ``E`` epochs of CNN.

    The base model is gated with fresh predictors; the gate stage and the ``rounds`` CNN phases share ``E``
    (:func:`split_epochs`) with the recipe's learning rate and batch size; the agents use
    :class:`LearnedSettings`. The schedule checkpoints into :meth:`RowContext.run_dir` and resumes from there.
    After it, the plan is brought to the budget on the whole ``val`` split (``guard_budget``) and the test
    images are scored under the agents' deterministic plan, each image costed from its masks.

    Args:
        ctx: The row context.
        mode: ``"static"``, ``"runtime"`` or ``"joint"`` (R_r = :data:`JOINT_TRADEOFF`).
        runtime_order: ``"u_r"`` or ``"prefix"`` (:attr:`agents.schedule.ScheduleConfig.runtime_order`).
    """
    from agents.cli import agent_specs
    from agents.schedule import JointTrainer, config_from_dict, config_to_dict

    s, cell = ctx.learned, ctx.cell
    gate, cnn = split_epochs(cell.epochs, s.rounds)
    rounds = s.rounds
    if mode == "static":  # nothing to gate: one static plan, learned once, trained for the whole of E
        gate, cnn, rounds = 0.0, cell.epochs, 1
    specs = agent_specs({"mode": mode, "algo": s.algo, "static_algo": s.static_algo or s.algo,
                         "hyperparams": list(s.hyperparams), "preset": s.preset})  # fmt: skip
    model = gate_model(copy.deepcopy(ctx.base()), predictor=True).to(ctx.device)
    data = {"train": ctx.train_set(model), "val": ctx.val_set(model)}
    schedule = config_from_dict({
        "mode": mode, "budget": cell.budget, "tradeoff": JOINT_TRADEOFF, "rounds": rounds,
        "gate_epochs": (gate, 0.0), "cnn_epochs": cnn, "cnn_lr": ctx.recipe.lr, "weight_decay": 1e-4,
        "grad_clip": None, "batch_size": ctx.recipe.batch_size, "runtime_steps": s.runtime_steps,
        "static_steps": s.static_steps, "n_envs": s.n_envs, "num_val": s.num_val, "seed": cell.seed,
        "static_min_keep": s.static_min_keep, "static_select": s.static_select, "runtime_order": runtime_order,
        "device": ctx.device, "distill": ctx.recipe.distill, "distill_temperature": ctx.recipe.distill_temperature,
    })  # fmt: skip
    trainer = JointTrainer(
        model, arch=cell.model, num_classes=data["train"].num_classes, data=data, config=schedule,
        runtime_agent=specs["runtime"], static_agent=specs["static"], run_dir=ctx.run_dir(), progress=ctx.progress,
        teacher=ctx.teacher(),
    )  # fmt: skip
    trainer.run(resume=True)
    guard = trainer.guard_budget(data["val"])
    test = trainer.evaluate_plan(ctx.test_set(trainer.model))
    training = _schedule_training(trainer, data["train"], schedule.batch_size)
    static_phases = [p for p in trainer.phases if p.kind == "rl_static"]
    recipe = {**ctx.recipe.as_dict(), "schedule": "one cosine over the gate stage and the CNN phases",
              "grad_clip": schedule.grad_clip}  # fmt: skip
    return ctx.result(
        policy=f"{mode} {s.algo} R_r={trainer.tradeoff:g}" + (" prefix" if runtime_order == "prefix" else ""),
        test=test,
        params_fraction=test["params_fraction"], training=training, rl_seconds=training["rl_seconds"],
        recipe=recipe,
        extra={
            "budget_guard": guard, "static_keep": trainer.static_keep, "schedule": config_to_dict(schedule),
            "static_selection": [trainer.history[p.name].get("selection") for p in static_phases],
        },
    )  # fmt: skip


def load_learned_row(
    out_dir: str | Path,
    cell: str,
    row: str,
    base: nn.Module,
    data: Mapping[str, ImageDataset],
    runs_dir: str | Path | None = None,
) -> Any | None:
    """A finished learned row's schedule as it was scored: CNN, agents, frozen ranking and the final budget guard.

    Args:
        out_dir: The protocol's result folder (:func:`run_protocol`'s ``out_dir``).
        cell: Cell folder name, e.g. ``resnet20_e1_b050_s0``.
        row: A learned row (:data:`LEARNED_ROWS`).
        base: The cell's base model (plain; it is gated here).
        data: ``{"train", "val"}`` splits normalised for ``base``.
        runs_dir: :func:`run_protocol`'s ``runs_dir`` (default ``out_dir``).

    Returns:
        An :class:`agents.schedule.JointTrainer` restored from the row's checkpoint with the guard's offset (runtime)
        or guarded static keep ratios applied, or ``None`` when the row has not finished (or failed).

    Raises:
        FileNotFoundError: the row finished but its checkpoint is not in ``runs_dir``.
    """
    from agents.cli import agent_specs
    from agents.schedule import CHECKPOINT_FILE, JointTrainer, config_from_dict

    result = {r.row: r for r in read_cell(out_dir, cell)}.get(row)
    if result is None or result.error:
        return None
    schedule = config_from_dict(result.extra["schedule"])
    learned = result.settings["learned"]
    specs = agent_specs({"mode": schedule.mode, "algo": learned["algo"],
                         "static_algo": learned["static_algo"] or learned["algo"],
                         "hyperparams": list(learned["hyperparams"]), "preset": learned["preset"]})  # fmt: skip
    run_dir = row_run_dir(out_dir if runs_dir is None else runs_dir, cell, row)
    if not (run_dir / CHECKPOINT_FILE).is_file():
        raise FileNotFoundError(
            f"the {row} row of {cell} is finished but its checkpoint is not in {run_dir} (a row file alone cannot be "
            f"rebuilt): pass the runs_dir it was run with, or run the row again (--rerun {row})"
        )
    teacher = copy.deepcopy(base) if schedule.distill > 0 else None  # needed to resume training, not to score
    trainer = JointTrainer(
        gate_model(base), arch=result.model, num_classes=data["train"].num_classes, data=data, config=schedule,
        runtime_agent=specs["runtime"], static_agent=specs["static"], run_dir=run_dir, progress=False,
        teacher=teacher,
    )  # fmt: skip
    trainer.load_checkpoint()
    guard = result.extra.get("budget_guard") or {}
    if guard.get("kind") == "runtime":
        trainer.action_offset = float(guard["offset"])
    if result.extra.get("static_keep"):
        trainer.static_keep = [float(k) for k in result.extra["static_keep"]]
    return trainer


def _register_defaults() -> None:
    _ROWS.add("l1", RowSpec("l1", functools.partial(static_row, spec="l1")))
    for name in HAND_POLICIES:
        row = f"hand:{name}"
        fn = functools.partial(static_row, spec=name)
        _ROWS.add(row, RowSpec(row, fn, hand=True, same_as="l1" if name == "l1" else None))
    _ROWS.add("fbs", RowSpec("fbs", fbs_row, kind="runtime"))
    for row, mode in LEARNED_ROWS.items():
        order = "prefix" if row in PREFIX_ROWS else "u_r"
        _ROWS.add(row, RowSpec(row, functools.partial(learned_row, mode=mode, runtime_order=order), kind="learned"))
    for name in [*SEED_METHODS, *SEED_VARIANTS]:
        kind = "runtime" if SEED_VARIANTS.get(name, (name,))[0] == "channel_gating" else "static"
        _ROWS.add(f"seed:{name}", RowSpec(f"seed:{name}", functools.partial(seed_method_row, name=name), kind=kind))


_register_defaults()


# ----------------------------------------------------------------------------------------------------------
# run_protocol
# ----------------------------------------------------------------------------------------------------------


def _weights_id(weights: str | Path | None) -> str | None:
    """What identifies a checkpoint across machines: a file's content digest, else the value as given."""
    if weights is None or str(weights) == "DEFAULT":
        return None if weights is None else "DEFAULT"
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found; pass --weights DEFAULT, a checkpoint path, or none")
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _settings(cell: Cell, spec: RowSpec, common: Mapping[str, Any], learned: LearnedSettings) -> dict[str, Any]:
    out = {"model": cell.model, "budget": cell.budget, "epochs": cell.epochs, "seed": cell.seed, **common}
    if spec.name in LEARNED_ROWS:
        out["learned"] = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(learned).items()}
    return json.loads(json.dumps(out))  # the values as they read back from the file


def _reuse(done: RowResult, settings: Mapping[str, Any], path: Path) -> RowResult:
    for key in sorted(set(settings) | set(done.settings)):
        if done.settings.get(key) != settings.get(key):
            raise ValueError(
                f"{path} was run with {key}={done.settings.get(key)!r}, this call has {settings.get(key)!r}; "
                f"pass --rerun {done.row} (rerun=[...]) to redo it, or use another --out"
            )
    return done


def _validate(
    budgets: Sequence[float], epochs: Sequence[float], seeds: Sequence[int], rows: Sequence[str],
    rerun: Sequence[str], test_images: int | None, num_val: int,
) -> None:  # fmt: skip
    if not budgets or not epochs or not seeds or not rows:
        raise ValueError("the protocol needs at least one budget, one training budget (epochs), one seed and one row")
    for b in budgets:
        if not (math.isfinite(b) and 0.0 < b <= 1.0):
            raise ValueError(f"budgets are MAC fractions in (0, 1], got {b}; pass e.g. --budgets 0.5 0.25")
    for e in epochs:
        if not (math.isfinite(e) and e >= 0.0):
            raise ValueError(f"epochs are training budgets >= 0 (fractions allowed), got {e}; pass e.g. --epochs 1")
    for s in seeds:
        if int(s) < 0:
            raise ValueError(f"seeds must be >= 0, got {s}")
    for name in rows:
        _ROWS.get(name)  # unknown: ValueError with close matches
    for name in rerun:
        if name not in rows:
            raise ValueError(f"--rerun {name}: not one of the rows run ({', '.join(rows)}); add it to --rows")
    if test_images is not None and test_images < 1:
        raise ValueError(f"test_images must be positive, got {test_images}; omit it to score the whole test split")
    if num_val < 1:
        raise ValueError(f"num_val must be positive, got {num_val}")


def run_protocol(
    *,
    model: str = "resnet20",
    weights: str | Path | None = "DEFAULT",
    dataset: str = "cifar10",
    data_dir: str | Path | None = None,
    budgets: Sequence[float] = (0.5,),
    epochs: Sequence[float] = (1.0,),
    seeds: Sequence[int] = (0,),
    rows: Sequence[str] | None = None,
    recipe: Recipe | None = None,
    learned: LearnedSettings | None = None,
    test_images: int | None = None,
    num_val: int = 512,
    out_dir: str | Path = "runs/protocol",
    runs_dir: str | Path | None = None,
    rerun: Sequence[str] = (),
    device: str = "cpu",
    progress: bool = True,
) -> list[RowResult]:
    """Run every row of every cell (budget × epochs × seed) on one base model; reuse the rows already done.

    Cells are visited epochs-major, then budget, then seed; rows in the order given. Each finished row is
    written to ``<out_dir>/<cell>/<row>.json`` at once (atomically), so an interrupted call loses at most the
    row in progress (a learned row resumes its schedule from its checkpoint). See the module docstring for
    the rules every row follows.

    Args:
        model: Registered model name.
        weights: Its base checkpoint: ``"DEFAULT"`` (the public one), a checkpoint path, or ``None`` (seed-0
            initialisation, for tests).
        dataset: Registered dataset.
        data_dir: Data root (``None``: ``$PRUNEGYM_DATA``, else the cache directory).
        budgets: MAC budgets ``B`` (fractions of the base model's MACs per image).
        epochs: Training budgets ``E`` in epochs (fractions allowed; 0 = no training).
        seeds: Seeds; every row runs once per seed.
        rows: Row names (:func:`list_rows`); default :data:`DEFAULT_ROWS`.
        recipe: The training recipe (default :class:`Recipe`: lr 0.01, batch 128).
        learned: Settings of the learned rows' agents (default :class:`LearnedSettings`).
        test_images: Score this many test images, evenly strided (``None``: the whole test split).
        num_val: Validation images of the static env (PFP's calibration, the env's own score).
        out_dir: Where the cell folders of row files go (small JSON files: worth keeping under version control).
        runs_dir: Where the learned rows' run folders (checkpoints, logs; large) go, as
            ``<runs_dir>/<cell>/runs/<row>`` (default ``out_dir``). A finished row is reused without its run
            folder; only :func:`load_learned_row` needs it.
        rerun: Rows to run again even where finished (in every cell of this call).
        device: Where models run.
        progress: Show progress bars.

    Returns:
        One :class:`RowResult` per cell and row, in visiting order.

    Raises:
        ValueError: bad budgets, epochs, seeds, rows or options (before anything runs); a finished row whose
            settings differ from this call's (pass ``rerun`` or another ``out_dir``).
        FileNotFoundError: the weights or the data are missing.
    """
    names = list(dict.fromkeys(rows if rows is not None else DEFAULT_ROWS))
    _validate(budgets, epochs, seeds, names, rerun, test_images, num_val)
    recipe = recipe or Recipe()
    learned = learned or LearnedSettings()
    if any(n in LEARNED_ROWS for n in names):
        from agents.cli import agent_specs

        for mode in {LEARNED_ROWS[n] for n in names if n in LEARNED_ROWS}:  # bad algorithms fail before any work
            try:
                agent_specs({"mode": mode, "algo": learned.algo, "static_algo": learned.static_algo or learned.algo,
                             "hyperparams": list(learned.hyperparams), "preset": learned.preset})  # fmt: skip
            except UsageError as err:
                raise ValueError(str(err)) from err
    common = {
        "format": ROW_FORMAT, "weights": _weights_id(weights), "dataset": dataset, "test_images": test_images,
        "num_val": num_val, "recipe": recipe.as_dict(),
    }  # fmt: skip
    bench = _Bench(
        model=model, weights=weights, gated_model=None, dataset=dataset, data_dir=data_dir, num_val=num_val,
        test_images=test_images, finetune_images=None, device=device,
    )  # fmt: skip
    cells = [
        Cell(model, None if weights is None else str(weights), float(b), float(e), int(s))
        for e in epochs
        for b in budgets
        for s in seeds
    ]
    out = Path(out_dir)
    runs_root = out if runs_dir is None else Path(runs_dir)
    results: list[RowResult] = []
    bar = tqdm(total=len(cells) * len(names), desc="protocol", disable=not progress, file=sys.stderr)
    try:
        for cell in cells:
            cell_dir = out / cell.name
            cell_dir.mkdir(parents=True, exist_ok=True)
            ran: set[str] = set()  # rows run in this call, in this cell
            for name in names:
                bar.set_postfix_str(f"{cell.name} {name}")
                spec = _ROWS.get(name)
                ctx = RowContext(name, spec.kind, cell, recipe, learned, cell_dir, runs_root, device, progress, bench)
                twin_redone = spec.same_as is not None and spec.same_as in rerun
                results.append(_run_row(
                    ctx, spec, _settings(cell, spec, common, learned), redo=name in rerun or twin_redone,
                    copy_ok=name not in rerun and (not twin_redone or spec.same_as in ran),
                ))  # fmt: skip
                ran.add(name)
                bar.update(1)
    finally:
        bar.close()
    return results


def _run_row(ctx: RowContext, spec: RowSpec, settings: dict[str, Any], *, redo: bool, copy_ok: bool) -> RowResult:
    """Reuse, copy or run one row of one cell, and store it.

    Args:
        ctx: The row's context.
        spec: The row.
        settings: What must match for reuse.
        redo: Run it even when finished.
        copy_ok: Its ``same_as`` row, if finished, may be copied (not when that one is about to be redone).
    """
    path = row_path(ctx.cell_dir, spec.name)
    if not redo:
        done = _read_row(path)
        if done is not None:
            log.info("%s %s: finished before, reused", ctx.cell.name, spec.name)
            return _reuse(done, settings, path)
    if redo and ctx.run_dir().exists():
        shutil.rmtree(ctx.run_dir())  # a rerun starts the row's schedule afresh
    twin = _read_row(row_path(ctx.cell_dir, spec.same_as)) if spec.same_as and copy_ok else None
    if twin is not None and twin.settings == settings and twin.error is None:
        result = dataclasses.replace(twin, extra={**twin.extra, "same_as": spec.same_as})
        log.info("%s %s: the same as %s, copied", ctx.cell.name, spec.name, spec.same_as)
    else:
        seed_everything(ctx.cell.seed)
        start = time.perf_counter()
        try:
            result = spec.fn(ctx)
        except BudgetUnreachable as err:  # the policy cannot be built at this budget: a row that misses it
            log.warning("%s %s: %s", ctx.cell.name, spec.name, err)
            result = RowResult(
                row=spec.name, policy=spec.name, kind=spec.kind, hand=spec.hand, cell=ctx.cell.name,
                group=ctx.cell.group, model=ctx.cell.model, budget=ctx.cell.budget, epochs=ctx.cell.epochs,
                seed=ctx.cell.seed, recipe=ctx.recipe.as_dict(), error=str(err),
            )  # fmt: skip
        result.seconds = time.perf_counter() - start
    result.row, result.kind, result.hand, result.settings = spec.name, spec.kind, spec.hand, dict(settings)
    result.meets_budget = _meets(result.mac_fraction, result.budget)  # the rule, whatever the row function said
    write_json(path, result.to_dict())
    return result


# ----------------------------------------------------------------------------------------------------------
# Tables, plot, summary
# ----------------------------------------------------------------------------------------------------------


def _one_group(rows: Sequence[RowResult]) -> None:
    groups = {r.group for r in rows}
    if len(groups) > 1:
        raise ValueError(f"rows of several cells ({', '.join(sorted(groups))}): pass one cell's rows (all seeds)")


def _best(rows: Sequence[RowResult], candidate: Callable[[RowResult], bool]) -> tuple[str, float] | None:
    """The candidate row with the best mean test top-1 over its seeds, among rows meeting the budget at all."""
    _one_group(rows)
    by_row: dict[str, list[RowResult]] = {}
    for r in rows:
        if candidate(r):
            by_row.setdefault(r.row, []).append(r)
    scored = [
        (statistics.fmean(r.test_top1 for r in group), name)
        for name, group in by_row.items()
        if all(r.meets_budget and math.isfinite(r.test_top1) for r in group)
    ]
    if not scored:
        return None
    top1, name = max(scored, key=lambda t: t[0])
    return name, top1


def best_hand(rows: Sequence[RowResult]) -> tuple[str, float] | None:
    """``best_hand`` of one cell: the hand-designed row with the best mean test top-1, among those meeting the budget.

    A row qualifies only if it meets the budget in every seed it ran; its score is its mean test top-1 over
    those seeds (a policy is chosen, then reported, so no seed is cherry-picked).

    Args:
        rows: The rows of one cell group (one model, budget and ``E``; any seeds).

    Returns:
        ``(row name, mean test top-1)``, or ``None`` when no hand-designed row meets the budget.

    Raises:
        ValueError: rows of several cell groups.
    """
    return _best(rows, lambda r: r.hand)


def best_learned(rows: Sequence[RowResult]) -> tuple[str, float] | None:
    """The learned row with the best mean test top-1 among those meeting the budget (rules of :func:`best_hand`)."""
    return _best(rows, lambda r: r.kind == "learned")


def _values(values: Sequence[float], digits: int) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "–"
    mean = f"{statistics.fmean(finite):.{digits}f}"
    return mean if len(values) == 1 else f"{mean} ({', '.join(f'{v:.{digits}f}' for v in values)})"


def _table_line(label: str, policy: str, group: Sequence[RowResult]) -> str:
    n = len(group)
    meets = sum(r.meets_budget for r in group)
    met = "yes" if meets == n else "no" if meets == 0 else f"{meets} of {n}"
    if any(r.error for r in group):
        met += " (infeasible)"
    macs = [r.mac_fraction for r in group if math.isfinite(r.mac_fraction)]
    mean_mac = f"{statistics.fmean(macs):.4f}" if macs else "–"
    max_mac = f"{max(r.mac_fraction_max for r in group if math.isfinite(r.mac_fraction)):.4f}" if macs else "–"
    learned = any(r.kind == "learned" for r in group)
    rl = f"{statistics.fmean(r.rl_seconds for r in group):.1f}" if learned else "–"
    return (
        f"| {label} | {policy} | {_values([r.test_top1 for r in group], 2)} | {mean_mac} | {max_mac} "
        f"| {_values([r.params_fraction for r in group], 4).split(' (')[0]} | {met} "
        f"| {statistics.fmean(r.train_seconds for r in group):.1f} | {rl} "
        f"| {', '.join(str(r.seed) for r in group)} |"
    )


_HEADER = [
    "| row | policy | test top-1 (%) | mean MAC | max MAC | params | meets budget | train (s) | RL (s) | seeds |",
    "|---|---|---:|---:|---:|---:|---|---:|---:|---|",
]


def _group_table(rows: Sequence[RowResult], expected: Sequence[str]) -> list[str]:
    by_row: dict[str, list[RowResult]] = {}
    for r in rows:
        by_row.setdefault(r.row, []).append(r)
    names = list(dict.fromkeys([*expected, *by_row]))
    lines = list(_HEADER)
    for name in names:
        group = sorted(by_row.get(name, []), key=lambda r: r.seed)
        if not group:
            lines.append(f"| {name} | not run |" + " – |" * 8)
            continue
        policies = list(dict.fromkeys(r.policy for r in group))
        lines.append(_table_line(name, policies[0] if len(policies) == 1 else " / ".join(policies), group))
    best = best_hand(rows) if rows else None
    if best is not None:
        lines.append(_table_line("best_hand", best[0], sorted(by_row[best[0]], key=lambda r: r.seed)))
    else:
        lines.append("| best_hand | " + ("not run" if not rows else "none meets the budget") + " |" + " – |" * 8)
    notes = []
    missing = [f"{r.row} (seed {r.seed}: " + (f"{r.error}" if r.error else f"mean MAC {r.mac_fraction:.4f}") + ")"
               for r in rows if not r.meets_budget]  # fmt: skip
    if missing:
        notes.append("Missing the budget (not ranked): " + "; ".join(missing) + ".")
    return [*lines, *([""] + notes if notes else [])]


def format_table(rows: Sequence[RowResult], *, expected: Sequence[str] = (), title: str | None = None) -> str:
    """A markdown table per cell group: row, policy, test top-1, mean and max MAC, params, budget, times, seeds.

    With several seeds the test top-1 column shows the mean and then each value in seed order; MAC columns
    show the mean of the means and the largest per-image fraction, times the mean. The last line of each
    table is ``best_hand`` (:func:`best_hand`, named); rows that miss their budget are listed under the table.

    Args:
        rows: Rows of any cells (one table per cell group, in first-seen order).
        expected: Rows each table should have: those without a result show as "not run".
        title: A heading above the first table (``###``); with no rows, the one table of "not run" rows.
    """
    groups: dict[str, list[RowResult]] = {}
    for r in rows:
        groups.setdefault(r.group, []).append(r)
    out: list[str] = []
    if not groups:
        out += ([f"### {title}", ""] if title else []) + _group_table([], expected)
        return "\n".join(out) + "\n"
    for i, (group, members) in enumerate(groups.items()):
        first = members[0]
        seeds = ", ".join(str(s) for s in sorted({r.seed for r in members}))
        heading = f"{group}: {first.model}, B = {first.budget:g}, E = {first.epochs:g} epoch(s), seeds {seeds}"
        out += [f"### {title if (title and i == 0) else heading}", "", *_group_table(members, expected), ""]
    return "\n".join(out).rstrip("\n") + "\n"


def pareto_plot(rows: Sequence[RowResult], path: str | Path, *, title: str | None = None) -> None:
    """Write test top-1 vs mean MAC fraction as a PNG: one panel per (model, ``E``), one marker per row and budget.

    Drawn by :func:`agents.compare.draw_pareto` (mean ± std over seeds, marker area ∝ stored parameters;
    hand-designed rows solid, ``fbs`` dashed, learned rows dotted). Rows that miss their budget are labelled
    "(over budget)"; rows that could not be built are left out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"static": "static", "runtime": "runtime", "learned": "trained"}
    panels: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        if not (math.isfinite(r.test_top1) and math.isfinite(r.mac_fraction)):
            continue
        label = r.row + ("" if r.meets_budget else " (over budget)")
        panels.setdefault((r.model, r.epochs), []).append({
            "policy": label, "budget": r.budget, "kind": styles.get(r.kind, "static"), "mac_fraction": r.mac_fraction,
            "test_top1": r.test_top1, "params": r.params_fraction, "val_top1": math.nan,
        })  # fmt: skip
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(7 * max(1, len(panels)), 5), squeeze=False)
    try:
        for ax, ((model, e), points) in zip(axes[0], panels.items(), strict=False):
            draw_pareto(ax, points, title=f"{title + ': ' if title else ''}{model}, E = {e:g} epoch(s)")
        if not panels:
            axes[0][0].text(0.5, 0.5, "no finished rows yet", ha="center", va="center")
            axes[0][0].set_axis_off()
        fig.tight_layout()
        fig.savefig(str(path), dpi=90)
    finally:
        plt.close(fig)


def _fmt_value(best: tuple[str, float] | None) -> str:
    return "nan" if best is None else f"{best[1]:.2f}"


def summary_line(cells: Mapping[str, Sequence[RowResult]]) -> str:
    """One ``key=value`` line: ``<label>_best_hand=<x> <label>_learned=<x>`` per cell, then the learned misses.

    ``best_hand`` is :func:`best_hand`'s mean test top-1, ``learned`` :func:`best_learned`'s (the best of the
    learned rows meeting the budget, mean over seeds); ``nan`` where no such row has run. The last field,
    ``learned_budget_misses``, counts the learned rows (every cell and seed) that miss their budget.

    Args:
        cells: Label (e.g. ``r20_e1_050``) → the rows of that cell group (all seeds), in output order.
    """
    parts = []
    misses = 0
    for label, rows in cells.items():
        parts.append(f"{label}_best_hand={_fmt_value(best_hand(rows) if rows else None)}")
        parts.append(f"{label}_learned={_fmt_value(best_learned(rows) if rows else None)}")
        misses += sum(1 for r in rows if r.kind == "learned" and not r.meets_budget)
    parts.append(f"learned_budget_misses={misses}")
    return " ".join(parts)


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, except that a bad option is a :class:`UsageError` (one line, exit code 2) instead of usage text."""

    def error(self, message: str) -> Any:  # noqa: D102
        raise UsageError(f"{message}; see prunegym protocol --help")


def _parser() -> argparse.ArgumentParser:
    L = LearnedSettings()  # one place for the learned rows' defaults
    p = _Parser(
        prog="prunegym protocol",
        description="The fair protocol: learned vs hand-designed channel pruning on one base model at equal MAC "
        "budgets and equal training (one recipe, E epochs each). Every finished row is stored in OUT/<cell>/ and "
        "reused by later calls; the table goes to OUT/protocol.md, the Pareto plot to OUT/pareto.png.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", default="resnet20", help="registered model name")
    p.add_argument("--weights", default="DEFAULT", help="DEFAULT (public checkpoint), a checkpoint path, or none")
    p.add_argument("--dataset", default="cifar10", help="registered dataset")
    p.add_argument("--data-dir", default=None, help="data root (default: $PRUNEGYM_DATA, else the cache)")
    p.add_argument("--budgets", nargs="+", type=float, default=[0.5], help="MAC budgets B (fractions)")
    p.add_argument("--epochs", nargs="+", type=float, default=[1.0], help="training budgets E in epochs")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds")
    p.add_argument("--rows", nargs="+", default=None, help=f"rows (default: all: {' '.join(DEFAULT_ROWS)})")
    p.add_argument("--lr", type=float, default=0.01, help="peak learning rate of the recipe (every row)")
    p.add_argument("--batch-size", type=int, default=128, help="images per step of the recipe (every row)")
    p.add_argument(
        "--distill",
        type=float,
        default=0.0,
        metavar="ALPHA",
        help="distil from the unpruned base with this weight in every row's training (default 0: off)",
    )
    p.add_argument("--test-images", type=int, default=None, help="score N evenly strided test images (default all)")
    p.add_argument(
        "--num-val",
        type=int,
        default=None,
        help=f"validation images of PFP's calibration (default 512) and of the static env ({L.num_val})",
    )
    p.add_argument("--out", default="runs/protocol", help="result folder (row files, tables, plot)")
    p.add_argument("--runs-dir", default=None, help="where the learned rows' checkpoints go (default: inside --out)")
    p.add_argument("--rerun", nargs="+", default=[], metavar="ROW", help="redo these rows where finished")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, or auto")
    g = p.add_argument_group("learned rows")
    g.add_argument("--algo", default=L.algo, help="algorithm of the agents")
    g.add_argument("--rounds", type=int, default=L.rounds, help="rounds of {RL phase, CNN phase}")
    g.add_argument("--runtime-steps", type=int, default=L.runtime_steps, help="runtime-agent timesteps per round")
    g.add_argument("--static-steps", type=int, default=L.static_steps, help="static-agent timesteps per round")
    g.add_argument("--n-envs", type=int, default=L.n_envs, help="images per runtime-env batch")
    g.add_argument(
        "--static-min-keep",
        type=float,
        default=L.static_min_keep,
        help="the static agent's keep floor (default min(0.2, B/2))",
    )
    g.add_argument(
        "--static-select",
        type=int,
        default=L.static_select,
        help="best-rewarded static episodes re-scored against the deterministic one (0: deterministic)",
    )
    g.add_argument("--hyperparams", nargs="+", default=[], metavar="KEY=VALUE", help="agent hyperparameter overrides")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    return p


def main(argv: list[str] | None = None) -> int:
    """The fair protocol: learned vs hand-designed pruning at equal MACs and equal training (``prunegym protocol``).

    Returns:
        0 on success, 2 on bad input (one line on stderr naming the cause and the fix).
    """
    try:
        args = _parser().parse_args(argv)
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                                format="%(levelname)s %(name)s: %(message)s")  # fmt: skip
        weights = None if str(args.weights).lower() == "none" else args.weights
        device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
        learned = LearnedSettings(
            algo=args.algo, rounds=args.rounds, runtime_steps=args.runtime_steps, static_steps=args.static_steps,
            n_envs=args.n_envs, num_val=args.num_val or LearnedSettings.num_val, hyperparams=tuple(args.hyperparams),
            static_min_keep=args.static_min_keep, static_select=args.static_select,
        )  # fmt: skip
        recipe = Recipe(lr=args.lr, batch_size=args.batch_size, distill=args.distill)
        rows = run_protocol(
            model=args.model, weights=weights, dataset=args.dataset, data_dir=args.data_dir, budgets=args.budgets,
            epochs=args.epochs, seeds=args.seeds, rows=args.rows, recipe=recipe,
            learned=learned, test_images=args.test_images, num_val=args.num_val or 512, out_dir=args.out,
            runs_dir=args.runs_dir, rerun=args.rerun, device=device, progress=not args.quiet,
        )  # fmt: skip
    except (UsageError, ValueError, FileNotFoundError) as err:
        message = " ".join(str(err).split())  # one line, whatever the message held
        print(f"prunegym protocol: error: {message}", file=sys.stderr)
        return 2
    out = Path(args.out)
    table = format_table(rows, expected=list(dict.fromkeys(args.rows or DEFAULT_ROWS)))
    (out / "protocol.md").write_text(table, encoding="utf-8")
    pareto_plot(rows, out / "pareto.png")
    print(table)
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
