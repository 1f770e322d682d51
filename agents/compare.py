"""Compare pruning policies on one base model: a results table and a Pareto plot.

:func:`compare` runs every policy × MAC budget (× seed, for stochastic policies) on the same base model and
data, and measures each pruned model on the same axes:

* **MAC fraction** per image and **stored parameters**, as fractions of the base model's;
* **val top-1** on the static environment's fixed validation subset (``num_val`` images, seeded) and **test
  top-1** on the test split (optionally an evenly strided subset of it), both measured on the final model
  (after any compensation and the optional equal fine-tune);
* **latency** at batch 1 and 128 (the fastest of several timed runs under ``torch.inference_mode``: on a shared
  machine the minimum is the figure least disturbed by other load, as ``timeit`` advises).

**Policies** are specs parsed by :func:`parse_policy`: a registered baseline name
(:func:`agents.baselines.list_baselines`), optionally with constructor options, ``name:key=value,key=value``
(e.g. ``l1:allocation=global``, ``neuron_merging:criterion=l2_gm``, ``pfp:deterministic=true``; values are
read as YAML scalars). The row label is the spec. Baselines are of three kinds:

* **static** (``uniform``, ``random``, ``l1``, ``l2``, ``bn_scale``, ``pfp``, ``neuron_merging``, ...): a
  ``prunegym/StaticPruning-v0`` env (:class:`envs.static.StaticPruningEnv`, by ``gymnasium.make`` like every env
  here) is built on the plain base model with the policy's channel criterion
  (:meth:`~agents.baselines.BaselinePolicy.channel_criterion`, bound to the validation images for data-driven
  ones such as PFP), :meth:`~agents.baselines.BaselinePolicy.prepare` solves the policy for the budget, one
  episode gives the plan and :meth:`~agents.baselines.BaselinePolicy.transform` the model (plain slicing by
  :func:`pruning.export.export_static`, or Neuron Merging's compensation). MACs and parameters are those of
  the exported model (:func:`pruning.accounting.model_cost`).
* **runtime** (``fbs``): per-image ratios need a *gated* model with runtime-importance predictors. It is
  ``gated_model`` (a PruneGym model file, e.g. the output of ``prunegym pretrain``, or a module), a gated
  ``model`` file, or else the base model gated with *fresh* predictors (:func:`pruning.gating.gate_model`):
  ``u_r = W·GAP(x) + b`` with ``W = 0`` and ``b = γ``, so a fresh predictor ranks channels by the BN scale γ,
  the same for every image, and FBS then degenerates to a static top-γ selection at one uniform ratio. The
  policy is prepared in a ``prunegym/RuntimePruning-v0`` env (R_r = 1: runtime pruning only) and its
  per-unit runtime ratios are applied on the test set: the MAC fraction is the **measured mean over the test
  images** (:class:`pruning.accounting.CostModel` from the applied keep counts; ``info`` adds the largest one
  and the predictor overhead), parameters are every stored backbone and predictor parameter, and latency is
  that of :class:`pruning.export.DynamicModel` (compact per-image computation at batch 1, masked at 128).
* **trained** (:class:`agents.baselines.TrainedBaseline`): methods that change the weights or layers. Each
  gets the same :class:`~agents.baselines.TrainContext` (train/val splits, the budget, the seed and the
  shared short training budget ``train_epochs``); its :meth:`~agents.baselines.TrainedBaseline.build` returns
  the model, scored as is, with MAC and parameter fractions measured as the method defines them (they are
  reported as returned). ``train_seconds`` is the method's own figure (the wall time of ``build`` when it
  reports none), and its ``info`` is written as a JSON string.

Trained agents join as the run directory ``train_agent.py`` wrote (kind ``"agent"``, see :func:`parse_policy`);
any other path or file name raises a ``ValueError`` saying so.

**Fine-tune.** With ``finetune_epochs > 0`` every final model (static, runtime with its plan in place, and
trained) gets the same fine-tune (:func:`finetune`: SGD, lr 0.01, cosine, batch 128; :mod:`agents.protocol`
trains every row with it too), optionally on a fixed evenly strided subset
of ``finetune_images`` training images; a plain model identical to one already fine-tuned (same layers,
weights and seed, e.g. ``uniform`` and ``l1``) reuses that result. Costs are not re-measured for trained
methods whose MACs are fixed by their layers: a method whose sparsity lives in zero weights must keep it under
training (e.g. with ``torch.nn.utils.parametrize``); a method whose MACs depend on the weights (Channel
Gating's gate rates) measures them again after the fine-tune
(:meth:`~agents.baselines.TrainedBaseline.measure`; ``info`` keeps ``macs_fraction_before_finetune``).

**Infeasible runs are skipped, not fatal.** A policy that raises ``ValueError`` at one budget (e.g.
``channel_gating`` below the MACs its always-on base paths cost) gets no row: a warning is logged, the run is
listed under "Skipped" in ``results.md`` with the error, and the comparison goes on. If every run is skipped,
``compare`` raises ``ValueError`` with all the messages.

With ``include_base`` (the command line's default) the first row, ``base``, is the unpruned plain model as
given (never fine-tuned): the reference for accuracy and latency.

Outputs in ``out_dir``: ``results.csv`` (one row per run, :data:`CSV_FIELDS`), ``results.md`` (one row per
policy × budget, mean ± std over seeds) and ``pareto.png`` (test top-1 vs MAC fraction, one series per policy,
marker area ∝ stored parameters; runtime series dashed, trained ones dotted).

**Seeding.** Each cell (one policy at one budget and seed) is a function of the call's settings and its own
(policy, budget, seed) only (:func:`run_cell`): it starts from torch's global generator seeded with its
seed, so no cell depends on the cells before it.

**On a Ray cluster.** With ``ray=`` (``--ray [ADDRESS]``) the cells run as Ray tasks in parallel
(:mod:`agents.distributed`); the rows and outputs are the serial run's, in the same order, except timings.

**Static cells side by side.** With ``static_envs=N`` > 1 (``--static-envs N``) the static cells run in
``N`` worker processes forked from this one once it has loaded the base model and the data, each worker
running :func:`run_cell`'s code on its copy-on-write share of them; then this process runs the other cells.
The unit of parallel work is the whole cell, not its episode: a static cell is one deterministic episode of
a prepared baseline (one step per unit, then one pass over the ``num_val`` images) followed by the pruned
model's scoring (fine-tune, val and test top-1, latency), and the baseline must be prepared on the env's
live model in the process that holds the env, which an SB3 ``SubprocVecEnv`` keeps in its workers
(:func:`agents.unwrap.unwrap_env` refuses it). So each worker builds the static envs of its cells with
``gymnasium.make`` as the serial run does, and since a cell depends only on its own (policy, budget, seed)
the rows, their order and the outputs are the serial run's except the timing columns (and, as with Ray, the
float noise of the thread count in a fine-tune). Forked workers stay at one torch thread (the fork hook of
:mod:`envs`, which the schedule's ``--static-envs`` workers rely on too), so every row's latency is then timed
at one thread, the static ones while other workers run: time with ``static_envs=1`` for the latency figures
you report. CPU only, on an OS that forks; not with ``ray``.

Command line: ``prunegym compare --policies l1 random fbs --budgets 0.5 0.3 --seeds 0 1 2`` (or
``python -m agents.compare ...``; add ``--ray`` to run the cells on a local Ray instance, ``--ray auto`` on the
cluster this machine joined, or ``--static-envs 4`` to run the static cells in four forked processes).
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing as mp
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
import yaml
from torch import nn
from tqdm import tqdm

from agents.baselines import (
    BaselinePolicy,
    BuiltModel,
    TrainContext,
    TrainedBaseline,
    baseline_class,
    get_baseline,
    list_baselines,
)
from agents.distributed import run_tasks
from agents.unwrap import unwrap_env
from envs import RUNTIME_ENV_ID, STATIC_ENV_ID
from pruning.accounting import CostModel, model_cost
from pruning.checkpoint import load_model
from pruning.data import ImageDataset, get_dataset, iterate_batches
from pruning.export import DynamicModel, export_static
from pruning.gating import applied_masks, gate_model, gated_units, is_gated, set_plan, stored_masks
from pruning.models import get_model, input_normalization
from pruning.plan import PruningPlan
from pruning.train import TrainConfig, dataset_for_model, evaluate, fractional_epochs, train

__all__ = [
    "CSV_FIELDS",
    "KINDS",
    "CompareSettings",
    "PolicySpec",
    "aggregate",
    "compare",
    "default_policies",
    "draw_pareto",
    "finetune",
    "main",
    "markdown_table",
    "measure_latency",
    "pareto_plot",
    "parse_policy",
    "read_csv",
    "run_cell",
    "write_csv",
]

log = logging.getLogger(__name__)

#: Policy kinds: how :func:`compare` runs a policy (see the module docstring); ``"base"`` is the reference row.
KINDS = ("static", "runtime", "trained", "agent")
#: Columns of ``results.csv``.
CSV_FIELDS = [
    "policy",
    "model",
    "kind",
    "budget",
    "seed",
    "mac_fraction",
    "params",
    "params_fraction",
    "val_top1",
    "val_top1_env",
    "test_top1",
    "test_images",
    "latency_b1_ms",
    "latency_b128_ms",
    "finetune_epochs",
    "train_epochs",
    "train_seconds",
    "keep_ratios",
    "info",
    "seconds",
]

#: Fine-tune recipe applied equally to every final model when ``finetune_epochs > 0``.
FINETUNE_LR = 0.01
FINETUNE_BATCH = 128
#: Calibration images bound by data-driven channel criteria (PFP): the first of the validation subset.
CALIBRATION_IMAGES = 64
_EVAL_BATCH = 500
_SAVED_AGENT_SUFFIXES = (".zip", ".pt", ".pth", ".pkl")
#: ``fn(model, seed, label)``: trains a final model in place (what the static and runtime runs call).
Finetuner = Callable[[nn.Module, int, str], None]


# ----------------------------------------------------------------------------------------------------------
# Policy specs
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicySpec:
    """One policy of a comparison, parsed from its spec by :func:`parse_policy`.

    Attributes:
        label: The spec as given: the row label in every output.
        name: The registered baseline name.
        kind: ``"static"``, ``"runtime"`` or ``"trained"`` (:data:`KINDS`).
        kwargs: Constructor options from the spec.
        repeats: Whether the policy runs once per seed (stochastic, and no ``seed`` fixed in the spec).
    """

    label: str
    name: str
    kind: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    repeats: bool = False

    def build(self, seed: int) -> BaselinePolicy:
        """A fresh policy for ``seed``.

        A stochastic static or runtime policy gets ``seed=``; a trained one gets its seed through
        :class:`~agents.baselines.TrainContext`.
        """
        if self.repeats and self.kind != "trained":
            return get_baseline(self.name, **self.kwargs, seed=seed)
        return get_baseline(self.name, **self.kwargs)


def _looks_like_saved_agent(spec: str) -> bool:
    return Path(spec).exists() or any(sep in spec for sep in ("/", "\\")) or spec.endswith(_SAVED_AGENT_SUFFIXES)


def is_agent_run(path: str | Path) -> bool:
    """Whether ``path`` is a finished ``train_agent.py`` run directory (``config.json`` + ``results.json``)."""
    root = Path(path)
    return root.is_dir() and (root / "config.json").is_file() and (root / "results.json").is_file()


def parse_policy(spec: str) -> PolicySpec:
    """Parse a policy spec: a baseline ``name`` or ``name:key=value[,key=value...]``, or a trained agent's run.

    Values are YAML scalars (``yaml.safe_load``: ``true``, ``0.3``, ``l2_gm``). The policy is built once here
    so that unknown names and options fail before anything runs. A directory written by ``train_agent.py``
    (kind ``"agent"``) brings its agents, its fine-tuned CNN and its plan: it is scored once, at the budget it
    was trained for.

    Args:
        spec: The spec.

    Returns:
        The parsed spec, with its kind and whether it repeats over seeds.

    Raises:
        ValueError: a path or file name that is not a finished ``train_agent`` run directory (saved agents join
            compare only as one), an unknown baseline (close matches suggested), or options the baseline does
            not take.
    """
    if is_agent_run(spec):
        return PolicySpec(spec, Path(spec).name, "agent", {"run_dir": str(spec)})
    if _looks_like_saved_agent(spec):
        raise ValueError(
            f"{spec!r} is not a finished train_agent run directory (config.json + results.json); saved agents join "
            "compare as the run directory train_agent.py wrote (it holds the agents, their CNN and their plan). "
            f"Other policies: registered baselines ({', '.join(list_baselines())}), optionally with options as "
            "name:key=value,key=value"
        )
    name, _, options = spec.partition(":")
    name = name.strip()
    kwargs: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in options.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"policy {spec!r}: options are key=value pairs separated by commas, got {item!r}")
        kwargs[key.strip()] = yaml.safe_load(value)
    cls = baseline_class(name)  # unknown name: ValueError with close matches
    try:
        policy = get_baseline(name, **kwargs)
    except TypeError as err:
        raise ValueError(f"policy {spec!r}: {err}; see the docstring of {cls.__name__} for its options") from None
    if isinstance(policy, TrainedBaseline):
        kind = "trained"
    elif "static" in cls.env_kinds:
        kind = "static"
    else:
        kind = "runtime"
    return PolicySpec(spec, name, kind, kwargs, repeats=policy.stochastic and "seed" not in kwargs)


def default_policies() -> list[str]:
    """Every registered baseline, sorted: what :func:`main` compares when ``--policies`` is not given."""
    return list_baselines()


# ----------------------------------------------------------------------------------------------------------
# Models and data
# ----------------------------------------------------------------------------------------------------------


def _load(model: str | Path | nn.Module, weights: str | Path | None, num_classes: int) -> nn.Module:
    """A registered name (seed 0 without weights, as the envs build it), a PruneGym model file, or a module."""
    if isinstance(model, nn.Module):
        if weights is not None:
            raise ValueError("weights= applies to a model given by name; load them into the module instead")
        return copy.deepcopy(model).eval()
    if isinstance(model, Path) or Path(model).suffix in (".pt", ".pth") or Path(model).is_file():
        path = Path(model)
        if weights not in (None, "DEFAULT"):
            raise ValueError(f"the model file {path} holds its weights; drop weights= ({weights!r})")
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} not found; pass a registered name or a prunegym model file")
        return load_model(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return get_model(model, num_classes=num_classes, weights=weights).eval()


def _model_name(model: str | Path | nn.Module) -> str:
    if isinstance(model, nn.Module):
        return type(model).__name__
    return Path(model).stem if (isinstance(model, Path) or Path(model).suffix) else str(model)


def measure_latency(
    model: nn.Module,
    batch: int,
    *,
    device: str | torch.device = "cpu",
    repeats: int = 5,
    warmup: int = 1,
    threads: int | None = None,
) -> float:
    """Fastest wall time (ms) of ``repeats`` forward passes of ``model`` on a ``batch × 3 × 32 × 32`` input.

    The minimum, not the median: other processes only ever add time, so on a shared machine the fastest run
    is the best estimate of the model's own cost (``timeit``'s advice).

    Args:
        model: The (exported) model; run in eval mode under ``torch.inference_mode``.
        batch: Images per forward pass.
        device: Where to run (the model is moved there).
        repeats: Timed runs; the fastest is returned.
        warmup: Untimed runs first.
        threads: CPU intra-op threads while timing (``torch.set_num_threads``, restored afterwards); ``None``
            keeps the current setting. One thread is the stable choice on a shared machine: a multi-threaded
            forward pass waits at every parallel region for its slowest thread, so a busy core can stall each
            pass by a whole scheduler time slice.
    """
    dev = torch.device(device)
    model = model.to(dev).eval()
    x = torch.randn(batch, 3, 32, 32, device=dev)
    times: list[float] = []
    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        _time_passes(model, x, warmup + repeats, times)
    finally:
        torch.set_num_threads(saved)
    return float(min(times[warmup:]))


def _time_passes(model: nn.Module, x: torch.Tensor, count: int, times: list[float]) -> None:
    dev = x.device
    with torch.inference_mode():
        for _ in range(count):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            start = time.perf_counter()
            model(x)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times.append(1000.0 * (time.perf_counter() - start))


@torch.no_grad()
def _top1_on(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    model.eval()
    correct = 0
    for start in range(0, int(y.shape[0]), batch_size):
        logits = model(x[start : start + batch_size])
        correct += int((logits.argmax(dim=1) == y[start : start + batch_size]).sum())
    return 100.0 * correct / max(1, int(y.shape[0]))


def _episode(env: gym.Env, policy: BaselinePolicy, seed: int) -> tuple[PruningPlan, dict[str, Any]]:
    """One episode of the prepared ``policy`` in a static env (wrapped, by ``gymnasium.make``): plan and last info."""
    obs, _ = env.reset(seed=seed)
    done = False
    info: dict[str, Any] = {}
    while not done:
        action, _ = policy.predict(obs, deterministic=True)
        obs, _, done, _, info = env.step(action)
    return unwrap_env(env).final_plan(), info


@torch.no_grad()
def _runtime_measure(model: nn.Module, data: ImageDataset) -> dict[str, Any]:
    """Top-1 and per-image costs of a gated model with its runtime plan in place, over ``data``."""
    model.eval()
    dev = next(model.parameters()).device
    cm = CostModel(model)
    stored = stored_masks(model)
    correct, n = 0, 0
    fractions, pred_macs = [], []
    keep_sum = torch.zeros(len(stored), dtype=torch.float64)
    cost = None
    for x, y in iterate_batches(data, _EVAL_BATCH, shuffle=False, augment=False, device=dev):
        logits = model(x)
        correct += int((logits.argmax(dim=1) == y).sum())
        n += int(y.shape[0])
        masks = applied_masks(model)
        keep_sum += torch.stack([m.sum(-1).double().cpu() for m in masks], dim=-1).sum(0)
        cost = cm.from_masks(masks, stored)
        fractions.append(cost.macs_fraction)
        pred_macs.append(cost.predictor_macs.double())
    assert cost is not None
    frac = torch.cat(fractions)
    return {
        "top1": 100.0 * correct / n,
        "mac_fraction": float(frac.mean()),
        "mac_fraction_max": float(frac.max()),
        "predictor_mac_fraction": float(torch.cat(pred_macs).mean()) / cost.base_macs,
        "params": cost.params + cost.predictor_params,
        "predictor_params": cost.predictor_params,
        "base_params": cost.base_params,
        "mean_kept": (keep_sum / n).tolist(),
    }


class _Bench:
    """What every run of one :func:`compare` call shares: models, splits, envs (built once, on demand)."""

    def __init__(
        self,
        *,
        model: str | Path | nn.Module,
        weights: str | Path | None,
        gated_model: str | Path | nn.Module | None,
        dataset: str,
        data_dir: str | Path | None,
        num_val: int | None,
        test_images: int | None,
        finetune_images: int | None,
        device: str | torch.device,
    ) -> None:
        self.dataset, self.data_dir, self.num_val, self.device = dataset, data_dir, num_val, device
        self.test_full = get_dataset(dataset, split="test", root=data_dir)
        self.test_images, self.finetune_images = test_images, finetune_images
        first = _load(model, weights, self.test_full.num_classes)
        #: the registry name of the base model when it was given by name (saved agents must match it)
        self.arch = model if isinstance(model, str) and not Path(model).suffix else None
        self.base: nn.Module | None = None if is_gated(first) else first.to(device)
        self._gated: nn.Module | None = first.to(device) if is_gated(first) else None
        self.predictors = "trained (model file)" if self._gated is not None else "fresh (u_r = BN gamma)"
        if gated_model is not None:
            gated = _load(gated_model, None, self.test_full.num_classes)
            if not is_gated(gated) or any(g.predictor is None for g in gated_units(gated)):
                raise ValueError(
                    "gated_model must be a gated model with runtime predictors (a `prunegym pretrain` output with "
                    "the gate stage); pass the plain model as model="
                )
            self._gated, self.predictors = gated.to(device), "trained (gated_model)"
        self._val: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._splits: dict[str, ImageDataset] = {}
        self._tests: dict[Any, ImageDataset] = {}
        self.static_envs: dict[tuple[str | None, float], gym.Env] = {}
        self.runtime_envs: dict[float, gym.Env] = {}

    def plain(self, what: str) -> nn.Module:
        if self.base is None:
            raise ValueError(
                f"{what} policies prune a plain model, and the model given is gated; pass the plain base model "
                "as model= (--model) and the gated one as gated_model= (--gated-model)"
            )
        return self.base

    @property
    def gated(self) -> nn.Module:
        """The model runtime policies act on (the base gated with fresh predictors unless one was given)."""
        if self._gated is None:
            self._gated = gate_model(self.plain("runtime"), predictor=True).eval()
        return self._gated

    def val_data(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """The static env's validation subset, normalised for ``model`` (the same images for every model)."""
        key = id(model)
        if key not in self._val:
            ref = gym.make(
                STATIC_ENV_ID, model=model, dataset=self.dataset, data_dir=self.data_dir, num_val=self.num_val,
                budget=1.0, device=self.device,
            )  # fmt: skip
            self._val[key] = unwrap_env(ref).validation_data
        return self._val[key]

    def test_set(self, model: nn.Module) -> ImageDataset:
        """The (strided) test split normalised for ``model`` (one copy per normalisation)."""
        key = input_normalization(model)
        if key not in self._tests:
            self._tests[key] = dataset_for_model(self.test_full, model).strided(self.test_images, what="test_images")
        return self._tests[key]

    def split(self, name: str, model: nn.Module) -> ImageDataset:
        """The train (or val) split normalised for ``model`` (loaded once)."""
        if name not in self._splits:
            self._splits[name] = get_dataset(self.dataset, split=name, root=self.data_dir)
        return dataset_for_model(self._splits[name], model)

    def static_env(self, criterion: Any, budget: float) -> gym.Env:
        """A ``prunegym/StaticPruning-v0`` env on the base model ranking by ``criterion`` (cached for registered names).

        Built by ``gymnasium.make``, so it is wrapped; :func:`agents.unwrap.unwrap_env` reaches the env itself.
        """
        key = (criterion, budget) if isinstance(criterion, str | None) else None
        if key is not None and key in self.static_envs:
            return self.static_envs[key]
        env = gym.make(
            STATIC_ENV_ID, model=self.plain("static"), dataset=self.dataset, data_dir=self.data_dir,
            num_val=self.num_val, budget=budget, criterion=criterion, device=self.device,
        )  # fmt: skip
        if key is not None:
            self.static_envs[key] = env
        return env

    def runtime_env(self, budget: float) -> gym.Env:
        """A ``prunegym/RuntimePruning-v0`` env on :attr:`gated` (by ``gymnasium.make``; cached per budget)."""
        if budget not in self.runtime_envs:
            self.runtime_envs[budget] = gym.make(
                RUNTIME_ENV_ID, model=self.gated, dataset=self.dataset, data_dir=self.data_dir, budget=budget,
                device=self.device,
            )  # fmt: skip
        return self.runtime_envs[budget]


# ----------------------------------------------------------------------------------------------------------
# One run per kind
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Result:
    """What a run hands to the common scoring: the model to score and what it measured itself."""

    model: nn.Module
    val: tuple[torch.Tensor, torch.Tensor]
    mac_fraction: float
    params: int
    params_fraction: float
    latency_model: nn.Module
    keep_ratios: list[float] | None
    val_top1_env: float = math.nan
    train_seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    test_top1: float | None = None  # set by runs that score the test split themselves (runtime)


def _run_base(bench: _Bench) -> _Result:
    """The reference row: the plain base model, unpruned and never fine-tuned."""
    base = bench.plain("the reference (base)")
    model = copy.deepcopy(base)
    n = sum(p.numel() for p in base.parameters())
    return _Result(
        model=model, val=bench.val_data(base), mac_fraction=1.0, params=n, params_fraction=1.0, latency_model=model,
        keep_ratios=None, info={"note": "the unpruned base model, never fine-tuned"},
    )  # fmt: skip


def _run_static(bench: _Bench, spec: PolicySpec, budget: float, seed: int, finetune: Finetuner) -> _Result:
    base = bench.plain("static")
    policy = spec.build(seed)
    calibration = bench.val_data(base)[0][:CALIBRATION_IMAGES]
    env = bench.static_env(policy.channel_criterion(calibration), budget)
    policy.prepare(env)
    plan, info = _episode(env, policy, seed)
    inner = unwrap_env(env)
    pruned = policy.transform(base, plan).to(bench.device)
    finetune(pruned, seed, spec.label)
    cost = model_cost(base, plan)
    params = sum(p.numel() for p in pruned.parameters())
    # kept / full channels per unit, as applied (the plan's ratios are action values inside each count's interval)
    keep = [int(k) / int(c) for k, c in zip(info["keep_counts"], inner.channels, strict=True)]
    return _Result(
        model=pruned, val=inner.validation_data, mac_fraction=float(cost.macs_fraction[0]), params=params,
        params_fraction=params / sum(p.numel() for p in base.parameters()), latency_model=pruned, keep_ratios=keep,
        val_top1_env=float(info["top1"]), info={"criterion": inner.criterion_name},
    )  # fmt: skip


def _run_runtime(bench: _Bench, spec: PolicySpec, budget: float, seed: int, finetune: Finetuner) -> _Result:
    gated = bench.gated
    env = bench.runtime_env(budget)
    policy = spec.build(seed).prepare(env)
    ratios = torch.tensor(policy.keep_ratios(), dtype=torch.float64)
    work = copy.deepcopy(gated)
    set_plan(work, PruningPlan(runtime_keep=ratios, tradeoff=1.0))
    finetune(work, seed, spec.label)
    measured = _runtime_measure(work, bench.test_set(work))
    info = {
        "predictors": bench.predictors,
        "mac_fraction_max": measured["mac_fraction_max"],
        "predictor_mac_fraction": measured["predictor_mac_fraction"],
        "predictor_params": measured["predictor_params"],
        "mean_kept_channels": [round(k, 3) for k in measured["mean_kept"]],
    }
    return _Result(
        model=work, val=bench.val_data(gated), mac_fraction=measured["mac_fraction"], params=measured["params"],
        params_fraction=measured["params"] / measured["base_params"],
        latency_model=DynamicModel(export_static(work), runtime=ratios), keep_ratios=policy.keep_ratios(),
        info=info, test_top1=measured["top1"],
    )  # fmt: skip


def _run_trained(
    bench: _Bench,
    spec: PolicySpec,
    budget: float,
    seed: int,
    finetune: _Finetune,
    train_epochs: float,
    progress: bool,
    built_models: dict[tuple[Any, ...], tuple[BuiltModel, float]] | None,
) -> _Result:
    base = bench.plain("training-based")
    policy = spec.build(seed)
    assert isinstance(policy, TrainedBaseline)
    context = TrainContext(
        train_set=bench.split("train", base), val_set=bench.split("val", base), budget=budget, seed=seed,
        epochs=train_epochs, device=str(bench.device), progress=progress,
    )  # fmt: skip
    key = (_fingerprint(base), spec.label, budget, seed, train_epochs)
    if built_models is not None and key in built_models:
        kept, wall = built_models[key]
        built = dataclasses.replace(kept, model=copy.deepcopy(kept.model))
    else:
        start = time.perf_counter()
        built = policy.build(copy.deepcopy(base), context)
        wall = time.perf_counter() - start
        if built_models is not None:  # kept before the fine-tune changes the model in place
            built_models[key] = (dataclasses.replace(built, model=copy.deepcopy(built.model)), wall)
    model = built.model.to(bench.device).eval()
    if built.macs_fraction > budget * 1.01:
        log.warning("%s @ %g: the method's model keeps %.4f of the MACs", spec.label, budget, built.macs_fraction)
    finetune(model, seed, spec.label)
    mac_fraction, info = float(built.macs_fraction), dict(built.info)
    if finetune.epochs > 0:
        measured = policy.measure(model, base, context)
        if measured is not None:  # the fine-tune changed what the MACs depend on
            info["macs_fraction_before_finetune"] = mac_fraction
            mac_fraction = float(measured)
    base_params = sum(p.numel() for p in base.parameters())
    return _Result(
        model=model, val=bench.val_data(base), mac_fraction=mac_fraction,
        params=round(built.params_fraction * base_params), params_fraction=float(built.params_fraction),
        latency_model=model, keep_ratios=built.keep_ratios,
        train_seconds=built.train_seconds if built.train_seconds > 0 else wall, info=info,
    )  # fmt: skip


def _run_agent(bench: _Bench, spec: PolicySpec) -> _Result:
    """A ``train_agent.py`` run: its CNN under its agents' plan, each test image costed from its masks."""
    from agents.cli import load_run

    run_dir = Path(spec.kwargs["run_dir"])
    masked, results = load_run(run_dir, dynamic=False)
    if bench.arch is not None and results["model"] != bench.arch:
        raise ValueError(f"{run_dir} pruned a {results['model']}, but this comparison is on a {bench.arch}")
    cnn = load_model(run_dir / "model.pt")
    cost_model = CostModel(cnn)  # built on the plan-free CNN: the agents' source is not called while tracing
    measured = evaluate(masked, bench.test_set(masked), batch_size=_EVAL_BATCH, cost_model=cost_model)
    dynamic, _ = load_run(run_dir, dynamic=True)
    static = results.get("static_keep")
    info = {
        "run_dir": str(run_dir),
        "mode": results["mode"],
        "tradeoff": results["tradeoff"],
        "algo": results["algo"],
        "mac_fraction_max": measured["macs_fraction_max"],
        "note": "the agents' own fine-tuned CNN (train_agent schedule); compare's fine-tune is not applied",
    }
    n_base = cost_model.base_params
    return _Result(
        model=masked, val=bench.val_data(masked), mac_fraction=float(measured["macs_fraction"]),
        params=round(measured["params_fraction"] * n_base), params_fraction=float(measured["params_fraction"]),
        latency_model=dynamic, keep_ratios=[float(k) for k in static] if static else None, info=info,
        test_top1=float(measured["top1"]),
    )  # fmt: skip


def _fingerprint(model: nn.Module) -> str:
    """A digest of ``model``'s layers and every state tensor: equal digests mean equal models."""
    digest = hashlib.sha256(str(model).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class _LrTrace:
    """A ``train`` writer that keeps only what the step count and the schedule need: the lr of every step."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> None:
        if tag == "train/lr":
            self.lrs.append(float(scalar_value))


def finetune(
    model: nn.Module,
    train_set: ImageDataset,
    epochs: float,
    *,
    lr: float = FINETUNE_LR,
    batch_size: int = FINETUNE_BATCH,
    seed: int = 0,
    device: str | torch.device = "cpu",
    desc: str = "finetune",
    teacher: nn.Module | None = None,
    distill: float = 0.0,
    distill_temperature: float = 4.0,
) -> dict[str, Any]:
    """Train ``model`` in place with the one fine-tune recipe of :func:`compare` and :mod:`agents.protocol`.

    SGD with Nesterov momentum 0.9, weight decay 1e-4 (on 2-D and larger parameters), peak learning rate ``lr``
    cosine-annealed per step over the whole run, ``batch_size`` images per step, the standard augmentation
    (:func:`pruning.train.train` with ``TrainConfig(optimizer="sgd", schedule="cosine")``). Fractional
    ``epochs`` run as whole epochs over a seeded subset (:func:`pruning.train.fractional_epochs`), so the run
    takes the optimizer steps of ``epochs`` passes and the cosine spans all of them.

    Args:
        model: The model (a gated one trains with whatever plan it carries).
        train_set: The training split, normalised for ``model``.
        epochs: Passes over ``train_set`` (``>= 0``; 0 trains nothing).
        lr: Peak learning rate (the first step's).
        batch_size: Images per step.
        seed: Seeds the subset, the data order and the augmentation.
        device: Where to train.
        desc: Log label.
        teacher: Distil from this model (e.g. the unpruned base) with weight ``distill`` and temperature
            ``distill_temperature`` (:func:`pruning.train.distillation_loss`); ``distill=0`` ignores it.
        distill: Weight of the distillation term in ``[0, 1]``.
        distill_temperature: Its softmax temperature.

    Returns:
        :func:`pruning.train.train`'s history (``"epochs"``, ``"steps"``) plus ``"images"`` (images that went
        through an optimizer step), ``"seconds"`` (wall time), ``"lr_first"`` / ``"lr_last"`` (the learning
        rate of the first and the last step, ``nan`` without steps) and ``"lr_steps"`` (steps whose learning
        rate was set: one per optimizer step).
    """
    data, whole = fractional_epochs(train_set, epochs, seed=seed)
    config = TrainConfig(
        epochs=whole, batch_size=batch_size, optimizer="sgd", lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4,
        schedule="cosine", seed=seed, device=str(device), log_every=1, distill=distill,
        distill_temperature=distill_temperature,
    )  # fmt: skip
    trace = _LrTrace()
    start = time.perf_counter()
    history = train(model, data, config, writer=trace, progress=False, desc=desc, teacher=teacher)
    history["seconds"] = time.perf_counter() - start
    history["images"] = len(history.get("epochs", [])) * len(data)
    history["lr_first"] = trace.lrs[0] if trace.lrs else math.nan
    history["lr_last"] = trace.lrs[-1] if trace.lrs else math.nan
    history["lr_steps"] = len(trace.lrs)
    return history


class _Finetune:
    """The equal fine-tune of every final model (nothing when ``epochs`` is 0).

    The fine-tune is seeded (data order, augmentation), so a plain (ungated) model equal in every layer and
    tensor to one already fine-tuned with the same seed (e.g. ``uniform`` and ``l1``, which rank channels alike
    on plain models) gets the stored result instead of a second run that would differ only by the float noise
    of multi-threaded CPU kernels.
    Gated models are always trained: their runtime plan lives outside the state dict.
    """

    def __init__(self, bench: _Bench, epochs: int) -> None:
        self.bench, self.epochs = bench, epochs
        self._done: dict[tuple[str, int], tuple[str, dict[str, torch.Tensor]]] = {}

    def __call__(self, model: nn.Module, seed: int, label: str) -> None:
        if self.epochs <= 0:
            return
        key = (_fingerprint(model), seed) if not is_gated(model) else None
        if key is not None and key in self._done:
            first, state = self._done[key]
            log.info("%s: the same model as %s before fine-tuning; its fine-tuned weights are reused", label, first)
            model.load_state_dict(state)
            model.eval()
            return
        data = self.bench.split("train", model).strided(self.bench.finetune_images, what="finetune_images")
        finetune(model, data, self.epochs, seed=seed, device=self.bench.device, desc=f"finetune {label}")
        model.eval()
        if key is not None:
            self._done[key] = (label, {k: v.detach().clone() for k, v in model.state_dict().items()})


# ----------------------------------------------------------------------------------------------------------
# One cell: a (policy, budget, seed) run, scored
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompareSettings:
    """What every cell of one :func:`compare` call shares, picklable: a Ray worker rebuilds its bench from it.

    The fields are the :func:`compare` arguments of the same names.

    Attributes:
        key: Identifies the call (a fresh random hex string by default): a process builds the base model, the
            data and the envs once per key (:func:`run_cell`) and reuses them for every cell of the call.
    """

    model: str | Path | nn.Module
    weights: str | Path | None
    gated_model: str | Path | nn.Module | None
    dataset: str
    data_dir: str | Path | None
    num_val: int | None
    test_images: int | None
    finetune_epochs: int
    finetune_images: int | None
    train_epochs: float
    latency: bool
    latency_threads: int | None
    device: str | torch.device
    progress: bool
    key: str = field(default_factory=lambda: uuid.uuid4().hex)


class _Cells:
    """One process's share of a :func:`compare` call: the bench, the fine-tune cache, and each cell's row."""

    def __init__(
        self,
        settings: CompareSettings,
        built_models: dict[tuple[Any, ...], tuple[BuiltModel, float]] | None = None,
    ) -> None:
        self.settings, self.built_models = settings, built_models
        self.bench = _Bench(
            model=settings.model, weights=settings.weights, gated_model=settings.gated_model,
            dataset=settings.dataset, data_dir=settings.data_dir, num_val=settings.num_val,
            test_images=settings.test_images, finetune_images=settings.finetune_images, device=settings.device,
        )  # fmt: skip
        self.finetune = _Finetune(self.bench, settings.finetune_epochs)

    def run(self, spec: PolicySpec, budget: float, seed: int) -> dict[str, Any] | str:
        """The cell's row, or why it was skipped (a ``ValueError`` of one infeasible combination).

        Every cell starts from torch's global generator seeded with its own ``seed`` (restored afterwards; on
        CUDA, the device's too), so a cell's row does not depend on which cells ran before it in the same
        process (what PruneGym draws is seeded explicitly; this covers e.g. the default init of new layers).
        """
        device = torch.device(self.settings.device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            try:
                return self._row(spec, budget, seed)
            except ValueError as exc:  # one infeasible combination (e.g. a budget below a method's floor)
                if spec.kind in ("base", "agent"):
                    raise
                return f"{spec.label} @ {budget:g} (seed {seed}): {exc}"

    def _row(self, spec: PolicySpec, budget: float, seed: int) -> dict[str, Any]:
        bench, finetune, settings = self.bench, self.finetune, self.settings
        runners: dict[str, Callable[[PolicySpec, float, int], _Result]] = {
            "base": lambda s, b, seed: _run_base(bench),
            "static": lambda s, b, seed: _run_static(bench, s, b, seed, finetune),
            "runtime": lambda s, b, seed: _run_runtime(bench, s, b, seed, finetune),
            "trained": lambda s, b, seed: _run_trained(
                bench, s, b, seed, finetune, settings.train_epochs, settings.progress, self.built_models
            ),
            "agent": lambda s, b, seed: _run_agent(bench, s),
        }
        start = time.perf_counter()
        res = runners[spec.kind](spec, budget, seed)
        res.model.eval()

        def timed(batch: int, repeats: int, model: nn.Module = res.latency_model) -> float:
            if not settings.latency:
                return math.nan
            return measure_latency(
                model, batch, device=settings.device, repeats=repeats, threads=settings.latency_threads
            )

        test_top1 = res.test_top1
        if test_top1 is None:
            test_top1 = float(evaluate(res.model, bench.test_set(res.model), batch_size=_EVAL_BATCH)["top1"])
        row: dict[str, Any] = {
            "policy": spec.label,
            "model": _model_name(settings.model),
            "kind": spec.kind,
            "budget": budget,
            "seed": seed,
            "mac_fraction": res.mac_fraction,
            "params": int(res.params),
            "params_fraction": res.params_fraction,
            "val_top1": _top1_on(res.model, *res.val),
            "val_top1_env": res.val_top1_env,
            "test_top1": test_top1,
            "test_images": len(bench.test_set(res.model)),
            "latency_b1_ms": timed(1, 20),
            "latency_b128_ms": timed(128, 3),
            "finetune_epochs": 0 if spec.kind in ("base", "agent") else settings.finetune_epochs,
            "train_epochs": settings.train_epochs if spec.kind == "trained" else 0.0,
            "train_seconds": res.train_seconds,
            "keep_ratios": " ".join(f"{k:.3f}" for k in (res.keep_ratios or [])),
            "info": json.dumps(res.info, sort_keys=True, default=str),
        }
        row["seconds"] = time.perf_counter() - start
        return row


#: The cells of the latest call this process ran cells for (a Ray worker's; see :func:`run_cell`).
_PROCESS_CELLS: dict[str, _Cells] = {}


def run_cell(settings: CompareSettings, spec: PolicySpec, budget: float, seed: int) -> dict[str, Any] | str:
    """Run one (policy, budget, seed) cell of a :func:`compare` call: what each Ray task of ``ray=`` runs.

    A pure function of picklable arguments: the process builds the call's bench (base model, data, envs)
    from ``settings`` at its first cell and keeps it for the next cells with the same ``settings.key`` (one
    call at a time). The serial :func:`compare` runs the same code in its own process, so both give the same
    rows, up to the timing columns (``latency_b1_ms``, ``latency_b128_ms``, ``seconds``, ``train_seconds``).

    Args:
        settings: The call's shared settings.
        spec: The policy (:func:`parse_policy`); ``PolicySpec("base", "base", "base")`` is the reference row.
        budget: The MAC budget.
        seed: The seed (policy, fine-tune, training and torch's global generator during the cell).

    Returns:
        The row (the keys of :data:`CSV_FIELDS`), or a one-line message when the policy cannot run at this
        budget (it raised ``ValueError``): :func:`compare` lists it under "Skipped".

    Raises:
        ValueError: from the base row or a trained agent's run (never skipped), and anything else a run raises.
    """
    cells = _PROCESS_CELLS.get(settings.key)
    if cells is None:
        _PROCESS_CELLS.clear()  # one call at a time: drop the previous call's models and data
        cells = _PROCESS_CELLS[settings.key] = _Cells(settings)
    return cells.run(spec, budget, seed)


#: In a worker forked by :func:`_run_here`: the parent's cells, inherited (bench, data, envs built so far).
_FORKED_CELLS: list[_Cells] = []


def _adopt(cells: _Cells) -> None:
    """Initialise a forked worker: run cells with the parent's :class:`_Cells` (a copy-on-write fork, not pickled)."""
    _FORKED_CELLS[:] = [cells]


def _forked_cell(run: tuple[PolicySpec, float, int]) -> dict[str, Any] | str:
    """What a forked worker runs for one static cell ``(spec, budget, seed)``: the parent's code, on its bench."""
    return _FORKED_CELLS[0].run(*run)


def _check_static_envs(
    static_envs: int, device: str | torch.device, ray: str | None, latency_threads: int | None
) -> None:
    """Refuse ``static_envs`` values that :func:`compare` cannot run (see its docstring)."""
    if isinstance(static_envs, bool) or not isinstance(static_envs, int) or static_envs < 1:
        raise ValueError(f"static_envs must be a positive number of processes, got {static_envs!r}")
    if static_envs == 1:
        return
    if ray is not None:
        raise ValueError("static_envs > 1 runs static cells in forked processes and ray= runs every cell as a "
                         "Ray task; pass one of them")  # fmt: skip
    if "fork" not in mp.get_all_start_methods():
        raise ValueError("static_envs > 1 forks worker processes, which this OS cannot: use static_envs=1 or ray=")
    if torch.device(device).type != "cpu":
        raise ValueError(
            f"static_envs > 1 forks worker processes, which cannot use device={str(device)!r} (a forked child "
            "cannot re-initialise CUDA): use device='cpu' or static_envs=1"
        )
    if latency_threads not in (None, 1):
        raise ValueError(
            f"static_envs > 1 forks worker processes, which must stay at one torch thread (see envs), so they "
            f"cannot time with latency_threads={latency_threads}: use latency_threads=1 (the default then) or "
            "static_envs=1"
        )


def _run_here(
    cells: _Cells, runs: Sequence[tuple[PolicySpec, float, int]], static_envs: int, progress: bool
) -> list[dict[str, Any] | str]:
    """Every cell's outcome, in the order of ``runs``: static cells in ``static_envs`` forked workers, the rest here.

    With ``static_envs`` = 1 (or fewer than two static cells) every cell runs here, one after another. Else a
    pool of forked worker processes (``multiprocessing``'s ``fork`` start method, as the schedule's
    ``--static-envs`` forks its ``SubprocVecEnv``) runs the static cells first, while this process waits; then
    this process runs the others (base, runtime, trained, agent) with its own threads, so their latencies are
    measured on a quiet machine.
    """
    static = [i for i, (spec, _, _) in enumerate(runs) if spec.kind == "static"] if static_envs > 1 else []
    if len(static) < 2:
        static = []
    outcomes: dict[int, dict[str, Any] | str] = {}
    bar = tqdm(total=len(runs), desc="compare", disable=not progress, file=sys.stderr)
    try:
        if static:
            workers = min(static_envs, len(static))
            bar.set_postfix_str(f"{len(static)} static cells in {workers} processes")
            # forked now, after the bench is built: the workers share its pages until they write them
            with mp.get_context("fork").Pool(workers, initializer=_adopt, initargs=(cells,)) as pool:
                for i, outcome in zip(static, pool.imap(_forked_cell, [runs[i] for i in static]), strict=True):
                    outcomes[i] = outcome
                    bar.update()
        for i, (spec, budget, seed) in enumerate(runs):
            if i not in outcomes:
                bar.set_postfix_str(f"{spec.label} @ {budget:g} seed {seed}")
                outcomes[i] = cells.run(spec, budget, seed)
                bar.update()
    finally:
        bar.close()
    return [outcomes[i] for i in range(len(runs))]


# ----------------------------------------------------------------------------------------------------------
# compare
# ----------------------------------------------------------------------------------------------------------


def compare(
    policies: Sequence[str],
    budgets: Sequence[float],
    *,
    model: str | Path | nn.Module = "resnet20",
    weights: str | Path | None = "DEFAULT",
    gated_model: str | Path | nn.Module | None = None,
    dataset: str = "cifar10",
    data_dir: str | Path | None = None,
    num_val: int | None = 512,
    test_images: int | None = None,
    seeds: Sequence[int] = (0,),
    finetune_epochs: int = 0,
    finetune_images: int | None = None,
    train_epochs: float = 0.2,
    out_dir: str | Path,
    latency: bool = True,
    progress: bool = True,
    device: str | torch.device = "cpu",
    title: str | None = None,
    include_base: bool = False,
    latency_threads: int | None = None,
    built_models: dict[tuple[Any, ...], tuple[BuiltModel, float]] | None = None,
    ray: str | None = None,
    static_envs: int = 1,
) -> list[dict[str, Any]]:
    """Run every policy × budget (× seed) on the same base model and data; write the table and the plot.

    Args:
        policies: Policy specs (:func:`parse_policy`): registered baselines, optionally with options.
        budgets: MAC budgets, fractions of the base model's MACs per image.
        model: The base model: a registered name, a PruneGym model file (:func:`pruning.checkpoint.load_model`)
            or a module. A gated one can serve runtime policies only.
        weights: Weights of a named model: ``"DEFAULT"`` (public checkpoint), a path, or ``None`` (seed-0 init).
        gated_model: The gated model (with trained predictors) runtime policies act on: a PruneGym model file
            or a module. ``None``: ``model`` if it is gated, else the base gated with fresh predictors
            (``u_r = γ``: a static γ ranking; see the module docstring).
        dataset: Registered dataset name (val subset for the env, test split for the report, train for the
            fine-tune and the training-based methods).
        data_dir: Data root (``None``: ``$PRUNEGYM_DATA``, else the cache directory).
        num_val: Images in the env's validation subset (``None``: the whole val split).
        test_images: Score only this many test images, evenly strided over the split (``None``: all).
        seeds: Seeds of stochastic policies (``policy.stochastic``, and every training-based method);
            deterministic ones run once with the first.
        finetune_epochs: Epochs of the same fine-tune for every final model (SGD, lr 0.01, cosine); 0 = none.
        finetune_images: Fine-tune on this many training images (a fixed, evenly strided subset); ``None``: all.
        train_epochs: The shared short training budget of training-based methods (``TrainContext.epochs``,
            passes over the training split; fractions allowed). Default 0.2.
        out_dir: Where ``results.csv``, ``results.md`` and ``pareto.png`` go (created).
        latency: Time the final models at batch 1 (fastest of 20 passes) and 128 (fastest of 3).
        latency_threads: CPU threads while timing (:func:`measure_latency`); ``None``: the current setting.
        progress: Show a progress bar over the runs.
        device: Where models run.
        title: Title of the table and the plot (default: model, dataset, fine-tune and training budget).
        include_base: Start with a ``base`` row: the unpruned plain model as given (never fine-tuned), the
            reference every policy is measured against (kind ``"base"``, budget and MAC fraction 1).
        built_models: A dict to share between calls on the same base model and data (e.g. one call per
            fine-tune setting): what training-based methods build is kept in it, keyed by (a digest of the
            base model's layers and weights, policy, budget, seed, ``train_epochs``), and a later call starts
            from a copy instead of training again
            (its ``train_seconds`` is the first call's). ``None`` (default): every call trains. Not with ``ray``.
        ray: Run every cell (policy, budget, seed) as a Ray task (:func:`run_cell`, through
            :func:`agents.distributed.run_tasks`; ``pip install "prunegym[ray]"``), at this address: ``"local"``
            starts a Ray instance on this machine, ``"auto"`` joins the running cluster, ``"HOST:PORT"`` names
            its head node. Each task takes one CPU (one torch thread; and one GPU when ``device`` is CUDA) and
            each worker process loads the model and data itself, so paths must be the same on every node.
            Rows, their order and the outputs are those of the serial run (``None``, the default) except the
            timing columns (``latency_*`` measured on whichever node ran the cell, ``seconds``,
            ``train_seconds``); a fine-tune that ran with several threads in the serial run may differ by the
            float noise of the thread count.
        static_envs: Run the static cells in this many worker processes forked from this one (see "Static
            cells side by side" in the module docstring); 1 (default) runs every cell here. Rows as with
            ``ray``: the serial run's except the timing columns (all timed at one thread), and up to the float
            noise of the thread count in a fine-tune. CPU only, not with ``ray``, ``latency_threads`` 1 or
            ``None``.

    Returns:
        One dict per run, with the keys of :data:`CSV_FIELDS` (``info`` is a JSON string).

    Raises:
        ValueError: an unknown policy or option, a saved agent, no policies, budgets or seeds, a bad budget,
            a gated model for static or trained policies, ``built_models`` with ``ray``, ``static_envs`` < 1 or
            > 1 with ``ray``, a CUDA ``device`` or ``latency_threads`` > 1, or every run skipped
            (a run a policy cannot do at its budget is skipped and listed in ``results.md``, see above).
        ImportError: ``ray`` without Ray installed (the message names the extra).
    """
    specs = [parse_policy(p) for p in dict.fromkeys(policies)]
    if not specs or not budgets or not seeds:
        raise ValueError("compare needs at least one policy, one budget and one seed")
    for b in budgets:
        if not (math.isfinite(b) and 0.0 < b <= 1.0):
            raise ValueError(f"budgets must be MAC fractions in (0, 1], got {b}")
    if finetune_epochs < 0:
        raise ValueError(f"finetune_epochs must be >= 0, got {finetune_epochs}")
    if not (math.isfinite(train_epochs) and train_epochs >= 0):
        raise ValueError(f"train_epochs must be a non-negative number of epochs, got {train_epochs}")
    if finetune_images is not None and finetune_images <= 0:
        raise ValueError(f"finetune_images must be positive, got {finetune_images}")
    _check_static_envs(static_envs, device, ray, latency_threads)
    if static_envs > 1:
        latency_threads = 1  # what a forked worker times with: every row alike
    if ray is not None and built_models is not None:
        raise ValueError(
            "built_models keeps trained models in this process, and with ray= the cells run in Ray workers; "
            "pass one of them"
        )
    settings = CompareSettings(
        model=model, weights=weights, gated_model=gated_model, dataset=dataset, data_dir=data_dir, num_val=num_val,
        test_images=test_images, finetune_epochs=finetune_epochs, finetune_images=finetune_images,
        train_epochs=train_epochs, latency=latency, latency_threads=latency_threads, device=device,
        progress=progress,
    )  # fmt: skip
    cells = _Cells(settings, built_models)
    bench = cells.bench
    for spec in specs:  # fail before the first run: a gated model cannot serve static or trained policies
        if spec.kind in ("static", "trained"):
            bench.plain(spec.kind)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_name = _model_name(model)
    any_trained = any(s.kind == "trained" for s in specs)

    runs = [
        (spec, float(b), int(s))
        for b in budgets
        for spec in specs
        if spec.kind != "agent"
        for s in (seeds if spec.repeats else seeds[:1])
    ]
    for spec in specs:  # a trained agent runs once, at the budget it was trained for
        if spec.kind == "agent":
            agent_budget = json.loads((Path(spec.kwargs["run_dir"]) / "results.json").read_text())["budget"]
            runs.append((spec, float(agent_budget), int(seeds[0])))
    if include_base and bench.base is not None:
        runs.insert(0, (PolicySpec("base", "base", "base"), 1.0, int(seeds[0])))
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []

    def record(outcome: dict[str, Any] | str) -> None:
        if isinstance(outcome, str):
            skipped.append(outcome)
            log.warning("skipped %s", outcome)
            return
        log.info(
            "%s @ %.3g (seed %d): MACs %.4f, params %d, val %.2f%%, test %.2f%%", outcome["policy"],
            outcome["budget"], outcome["seed"], outcome["mac_fraction"], outcome["params"], outcome["val_top1"],
            outcome["test_top1"],
        )  # fmt: skip
        rows.append(outcome)

    if ray is None:
        for outcome in _run_here(cells, runs, static_envs, progress):
            record(outcome)
    else:
        del cells, bench  # the workers build their own
        gpus = 1.0 if torch.device(device).type == "cuda" else 0.0
        worker_settings = dataclasses.replace(settings, progress=False)  # one bar, over the cells
        for outcome in run_tasks(
            run_cell, runs, address=ray, shared=(worker_settings,), num_gpus=gpus, progress=progress, desc="compare"
        ):
            record(outcome)

    if title is None:
        title = f"{model_name} on {dataset}, fine-tune {finetune_epochs} epoch(s)"
        if any_trained:
            title += f", training-based methods {train_epochs:g} epoch(s)"
    if skipped and all(r["kind"] == "base" for r in rows):
        raise ValueError("every run was skipped:\n  " + "\n  ".join(skipped))
    write_csv(out / "results.csv", rows)
    table = markdown_table(aggregate(rows), title=title)
    if skipped:
        table += "\n\nSkipped (no row):\n\n" + "\n".join(f"- {line}" for line in skipped) + "\n"
    (out / "results.md").write_text(table, encoding="utf-8")
    pareto_plot(rows, out / "pareto.png", title=title)
    log.info("wrote %s, %s and %s", out / "results.csv", out / "results.md", out / "pareto.png")
    return rows


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``results.csv`` back: numbers as numbers (``nan`` where not measured), text columns as text."""
    text = {"policy", "model", "kind", "keep_ratios", "info"}
    integers = {"seed", "params", "test_images", "finetune_epochs"}
    with Path(path).open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [{k: (v if k in text else int(v) if k in integers else float(v)) for k, v in row.items()} for row in rows]


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` (dicts with the keys of :data:`CSV_FIELDS`) to ``path`` as CSV."""
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k) for k in CSV_FIELDS})


_MEASURES = ("mac_fraction", "params", "val_top1", "test_top1", "latency_b1_ms", "latency_b128_ms", "train_seconds")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [float(v) for v in values]
    if any(math.isnan(v) for v in vals):  # not measured (latency=False)
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (policy, budget), in first-seen order: ``runs``, ``kind`` and ``(mean, std)`` of each measure."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["policy"], float(row["budget"])), []).append(row)
    out = []
    for (policy, budget), group in groups.items():
        entry: dict[str, Any] = {"policy": policy, "budget": budget, "runs": len(group)}
        entry["kind"] = group[0].get("kind", "static")
        for key in _MEASURES:
            entry[key] = _mean_std([r.get(key, 0.0) for r in group])
        out.append(entry)
    return out


def _fmt(value: tuple[float, float], digits: int, runs: int) -> str:
    mean, std = value
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if runs > 1 else f"{mean:.{digits}f}"


def markdown_table(entries: Sequence[dict[str, Any]], *, title: str | None = None) -> str:
    """A markdown table of :func:`aggregate`'s entries (mean ± std where a policy ran over several seeds)."""
    lines = [f"## {title}", ""] if title else []
    lines += [
        "| policy | budget | runs | MAC fraction | params | val top-1 (%) | test top-1 (%) | latency b1 (ms) "
        "| latency b128 (ms) | train (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in entries:
        n = int(e["runs"])
        params = f"{e['params'][0]:,.0f}" + (f" ± {e['params'][1]:,.0f}" if n > 1 else "")
        trained = _fmt(e["train_seconds"], 1, n) if e.get("kind") == "trained" else "–"
        lines.append(
            f"| {e['policy']} | {e['budget']:g} | {n} | {_fmt(e['mac_fraction'], 4, n)} | {params} "
            f"| {_fmt(e['val_top1'], 2, n)} | {_fmt(e['test_top1'], 2, n)} | {_fmt(e['latency_b1_ms'], 2, n)} "
            f"| {_fmt(e['latency_b128_ms'], 1, n)} | {trained} |"
        )
    return "\n".join(lines) + "\n"


def draw_pareto(ax: Any, rows: Sequence[dict[str, Any]], *, title: str | None = None) -> None:
    """Draw :func:`pareto_plot`'s chart on a matplotlib ``Axes`` (to compose several in one figure).

    One series per policy (mean ± std over seeds), marker area ∝ stored parameters (scaled to the largest in
    ``rows``); static series are solid lines, runtime ones dashed, training-based ones dotted.
    """
    import matplotlib

    styles = {"static": "-", "runtime": "--", "trained": ":", "base": "*"}
    entries = aggregate(rows)
    max_params = max((e["params"][0] for e in entries), default=1.0) or 1.0
    policies = list(dict.fromkeys(e["policy"] for e in entries))
    palette = matplotlib.colormaps["tab20"]  # the 10 dark colours first, then their light companions
    for i, policy in enumerate(policies):
        pts = sorted((e for e in entries if e["policy"] == policy), key=lambda e: e["mac_fraction"][0])
        xs = [e["mac_fraction"][0] for e in pts]
        ys = [e["test_top1"][0] for e in pts]
        errs = [e["test_top1"][1] for e in pts]
        sizes = [20.0 + 280.0 * e["params"][0] / max_params for e in pts]
        color = palette((2 * i) % 20 + (i // 10) % 2)
        (line,) = ax.plot(xs, ys, styles.get(pts[0]["kind"], "-"), color=color, alpha=0.6, label=policy)
        ax.errorbar(xs, ys, yerr=errs, fmt="none", ecolor=line.get_color(), alpha=0.6, capsize=3)
        ax.scatter(xs, ys, s=sizes, color=line.get_color(), alpha=0.8, edgecolors="black", linewidths=0.5)
    ax.set_xlabel("MAC fraction of the base model (runtime: mean over the test set)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title((title + "\n" if title else "") + "top-1 vs MACs (marker area ∝ stored params)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="x-small", loc="best")


def pareto_plot(rows: Sequence[dict[str, Any]], path: str | Path, *, title: str | None = None) -> None:
    """Write test top-1 vs MAC fraction as a PNG (see :func:`draw_pareto`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    try:
        draw_pareto(ax, rows, title=title)
        fig.tight_layout()
        fig.savefig(str(path), dpi=100)
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prunegym compare",
        description=(
            "Compare pruning policies on one base model: every policy × budget (× seed for stochastic policies) "
            "is pruned, measured (MAC fraction, stored params, val/test top-1, latency) and written to "
            "results.csv, results.md and pareto.png. Policies are registered baselines, optionally with options "
            "(name:key=value,key=value): static ones prune the plain model, runtime ones (fbs) act on a gated "
            "model, training-based ones train for --train-epochs. Saved agents join via train_agent run "
            "directories (not read yet)."
        ),
    )
    p.add_argument(
        "--policies", nargs="+", default=None, metavar="SPEC",
        help=f"policy specs (default: every registered baseline: {', '.join(default_policies())})",
    )  # fmt: skip
    p.add_argument("--budgets", nargs="+", type=float, default=[0.5], help="MAC budgets (fractions; default 0.5)")
    p.add_argument(
        "--model", default="resnet20", help="registered model name or PruneGym model file (default resnet20)"
    )
    p.add_argument(
        "--weights", default="DEFAULT",
        help="DEFAULT (public checkpoint), a checkpoint path, or 'none' for a seed-0 init (default DEFAULT)",
    )  # fmt: skip
    p.add_argument(
        "--gated-model", default=None,
        help="gated PruneGym model file with trained predictors for runtime policies (default: gate the base "
        "with fresh predictors, u_r = BN gamma)",
    )  # fmt: skip
    p.add_argument("--dataset", default="cifar10", help="registered dataset (default cifar10)")
    p.add_argument("--data-dir", default=None, help="data root (default $PRUNEGYM_DATA, else the cache)")
    p.add_argument("--num-val", type=int, default=512, help="images in the env's val subset (default 512)")
    p.add_argument("--test-images", type=int, default=None, help="score this many test images (default all)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of stochastic policies (default 0)")
    p.add_argument("--finetune-epochs", type=int, default=0, help="equal fine-tune of every final model (default 0)")
    p.add_argument(
        "--finetune-images", type=int, default=None, help="fine-tune on this many train images (default all)"
    )
    p.add_argument(
        "--train-epochs", type=float, default=0.2,
        help="shared training budget of training-based methods, in epochs (default 0.2)",
    )  # fmt: skip
    p.add_argument("--out", default=None, help="output folder (default runs/compare__<model>__<time>)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("--latency-threads", type=int, default=None, help="CPU threads while timing (default: current)")
    p.add_argument("--no-base", action="store_true", help="no reference row for the unpruned base model")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
        help="run every cell as a Ray task (pip install 'prunegym[ray]'): alone, on a new local Ray instance; "
        "'auto', on the cluster this machine joined (ray start); HOST:PORT, on that head node's cluster",
    )  # fmt: skip
    p.add_argument(
        "--static-envs", type=int, default=1, metavar="N",
        help="run the static cells in N processes forked from this one (CPU; latency timed at one thread; default 1)",
    )  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    """Compare pruning policies: table + Pareto plot (``prunegym compare``)."""
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    weights = None if str(args.weights).lower() == "none" else args.weights
    out = args.out or f"runs/compare__{_model_name(args.model)}__{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        compare(
            args.policies or default_policies(), args.budgets, model=args.model, weights=weights,
            gated_model=args.gated_model, dataset=args.dataset, data_dir=args.data_dir, num_val=args.num_val,
            test_images=args.test_images, seeds=args.seeds, finetune_epochs=args.finetune_epochs,
            finetune_images=args.finetune_images, train_epochs=args.train_epochs, out_dir=out,
            latency=not args.no_latency, progress=not args.no_progress, device=args.device,
            include_base=not args.no_base, latency_threads=args.latency_threads, ray=args.ray,
            static_envs=args.static_envs,
        )  # fmt: skip
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"prunegym compare: error: {e}", file=sys.stderr)
        return 2
    print((Path(out) / "results.md").read_text(encoding="utf-8"))
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
