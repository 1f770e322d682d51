"""``python train_agent.py`` / ``prunegym train``: train two pruning agents on a CNN and export the result.

The agents and their schedule are those of Chen, Chen & Pan, "Storage Efficient and Dynamic Flexible Runtime
Channel Pruning via Deep Reinforcement Learning", NeurIPS 2020.

One run = gate stage → rounds of {RL phase (runtime agent, then static agent, CNN frozen), CNN phase (agents
frozen)} → final evaluation and export (:mod:`agents.schedule` describes the phases). With no options it
prunes the public ResNet-20 on CIFAR-10 to half of its MACs in about 15 minutes on two CPU cores, and ends with
a table: the base model, the pruned model, and the uniform-ratio policy at the same measured MAC fraction.

Run directory (``--out``; default ``runs/<env>__<algo>__<seed>__<time>``):

=======================  ==================================================================================
``config.json``          resolved settings, hyperparameters of both agents, the command line(s)
``progress.csv``         every logged scalar (stable-baselines3 logger), one row per dump
``events.out.*``         TensorBoard: ``runtime/…``, ``static/…`` (each agent's SB3 keys), ``pruning/…``
                         (MAC / param fraction, val top-1 of finished episodes), ``reward/…`` (reward parts),
                         ``eval/…`` (val subset after every phase), ``cnn/…``, ``gate/…``
``checkpoint.pt``        position in the schedule, CNN, optimizer, static plan, RNG (``--resume`` reads it)
``checkpoints/*.zip``    the agents at that checkpoint
``runtime_agent.zip``    final agents (``PPO.load`` etc.; ``agents.cli.load_run`` rebuilds everything)
``static_agent.zip``
``model.pt``             the fine-tuned gated CNN (``pruning.checkpoint.load_model``)
``exported.pt``          the static plan applied physically (``pruning.export.load_exported``)
``results.json``         base / pruned / uniform-reference top-1 (val, test), MAC and param fractions, times
=======================  ==================================================================================

Examples::

    python train_agent.py                                   # ResNet-20, CIFAR-10, budget 0.5, joint mode
    python train_agent.py --mode runtime --budget 0.25 --algo recurrent_ppo --preset paper
    python train_agent.py --model tiny_cnn --dataset synthetic --total-timesteps 4000 --out /tmp/run
    python train_agent.py --algo mypkg.algos:MyAlgo --hyperparams learning_rate=1e-4 runtime.n_steps=16
    python train_agent.py --resume runs/RuntimePruning-v0__ppo__0__20260101-120000
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import os
import time
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from envs import RUNTIME_ENV_ID, STATIC_ENV_ID
from pruning.checkpoint import load_model, save_model
from pruning.cli import HelpFormatter
from pruning.data import ImageDataset, get_dataset, list_datasets
from pruning.export import DynamicModel, export_static, load_exported, save_exported
from pruning.gating import gate_model, is_gated, set_plan
from pruning.models import get_model, list_models, load_checkpoint_file
from pruning.plan import RUNTIME_ORDERS, PruningPlan
from pruning.runs import CONFIG_FILE, UsageError, command_record, common_settings, run_command, write_json
from pruning.train import dataset_for_model, evaluate, seed_everything

from .algos import get_algo
from .hyperparams import load_hyperparams
from .schedule import (
    MODE_DEFAULTS,
    MODES,
    STATIC_VEC_ENVS,
    AgentSpec,
    JointTrainer,
    ScheduleConfig,
    config_from_dict,
    config_to_dict,
    schedule_defaults,
)

__all__ = ["build_parser", "load_run", "main", "resolve_config", "run"]

log = logging.getLogger("agents.cli")

RESULTS_FILE, MODEL_FILE, EXPORTED_FILE = "results.json", "model.pt", "exported.pt"
AGENT_FILES = {"runtime": "runtime_agent.zip", "static": "static_agent.zip"}
#: Settings that define a run; ``--resume`` refuses to change them.
IDENTITY_KEYS = (
    "model",
    "weights",
    "dataset",
    "mode",
    "budget",
    "param_budget",
    "tradeoff",
    "algo",
    "static_algo",
    "seed",
    "rounds",
    "preset",
)
#: The fair protocol's hand-designed rows that every run ends with (same base, same E, same MAC budget).
REFERENCE_ROWS = ("l1", "fbs")
#: Where a random base model is saved so that the reference rows start from the same one.
BASE_FILE = "base.pt"
#: Share of each round's RL timesteps given to the static agent when ``--total-timesteps`` sets both.
STATIC_SHARE = 0.1
#: ``train_agent.py``'s defaults where they are not :class:`ScheduleConfig`'s; every other option built from a field
#: (:func:`build_parser`) defaults to the field's default. ``mode``: the static agent alone, which wins the fair
#: table at one epoch, while the dataclass keeps Chen et al.'s joint schedule (whose gate stage, rounds and CNN
#: epochs are its defaults, and which its other callers build). ``device``: ``auto`` becomes cuda when there is
#: one (:func:`pruning.runs.common_settings`; the dataclass needs a real device). ``None``: filled in later, by
#: :func:`resolve_config` from ``--mode`` (:func:`agents.schedule.schedule_defaults`) or ``--total-timesteps``, and
#: (``n_envs``) by :func:`run` from the hyperparameter file; the dataclass's default where nothing else sets it.
CLI_DEFAULTS: dict[str, Any] = {
    "mode": "static", "device": "auto", "rounds": None, "gate_epochs": None, "cnn_epochs": None,
    "runtime_steps": None, "static_steps": None, "n_envs": None,
}  # fmt: skip


# -----------------------------------------------------------------------------------------------------------
# command line
# -----------------------------------------------------------------------------------------------------------


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from err
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {text}")
    return value


def _shown(value: Any) -> str:
    """A default as ``--help`` prints it: ``0.4``, ``2``, ``0.2 0``."""
    return " ".join(f"{v:g}" for v in value) if isinstance(value, tuple) else f"{value:g}"


def _mode_note(name: str) -> str:
    """``"default: 2; static mode 1"``: the help note of a setting whose default depends on ``--mode``."""
    by_mode = "".join(
        f"; {mode} mode {_shown(values[name])}" for mode, values in MODE_DEFAULTS.items() if name in values
    )
    return f"default: {_shown(getattr(ScheduleConfig, name))}{by_mode}"


def _add_setting(group: argparse._ArgumentGroup, name: str, *, defaults: bool, note: str = "", **kwargs: Any) -> None:
    """Add the :class:`ScheduleConfig` field ``name`` to ``group`` as the option ``--name-with-dashes``.

    The default is the field's, or :data:`CLI_DEFAULTS`'s where ``train_agent.py``'s differs; the help is the
    field's ``metadata["help"]``; the annotation gives the type: ``bool`` becomes ``--name/--no-name``,
    ``X | None`` takes an ``X``, ``tuple[X, X]`` two ``X`` values.

    Args:
        group: The parser's option group.
        name: A field of :class:`ScheduleConfig`.
        defaults: ``False`` makes the default ``argparse.SUPPRESS`` (:func:`build_parser`).
        note: Appended to the field's help in parentheses (what only the command line needs to say).
        **kwargs: More ``add_argument`` settings (``type``, ``choices``, ``metavar``); they win over the derived ones.
    """
    spec = {f.name: f for f in dataclasses.fields(ScheduleConfig)}[name]
    hint = typing.get_type_hints(ScheduleConfig)[name]
    parts = [a for a in typing.get_args(hint) if a is not type(None)]
    options: dict[str, Any]
    if hint is bool:
        options = {"action": argparse.BooleanOptionalAction}
    elif typing.get_origin(hint) is tuple:
        options = {"type": parts[0], "nargs": len(parts)}
    else:
        kind = parts[0] if parts else hint
        options = {} if kind is str else {"type": kind}
    default = CLI_DEFAULTS.get(name, spec.default)
    group.add_argument(
        f"--{name.replace('_', '-')}",
        default=default if defaults else argparse.SUPPRESS,
        help=spec.metadata["help"] + (f" ({note})" if note else ""),
        **{**options, **kwargs},
    )


def build_parser(*, defaults: bool = True) -> argparse.ArgumentParser:
    """The argument parser of ``train_agent.py`` / ``prunegym train``.

    The schedule's options are :class:`ScheduleConfig`'s fields (:func:`_add_setting`): one default and one help
    text per setting, in the dataclass.

    Args:
        defaults: With ``False`` every default is ``argparse.SUPPRESS`` (used to apply overrides on ``--resume``).
    """

    def d(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    def setting(group: argparse._ArgumentGroup, name: str, **kwargs: Any) -> None:
        _add_setting(group, name, defaults=defaults, **kwargs)

    p = argparse.ArgumentParser(
        prog="train_agent.py",
        description="Train runtime and static channel-pruning agents (Chen, Chen & Pan, NeurIPS 2020) on a CNN "
        "with the alternating schedule, then export the pruned model. Writes a run directory.",
        formatter_class=HelpFormatter,
        argument_default=None if defaults else argparse.SUPPRESS,
    )
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=d("resnet20"), metavar="NAME", help=f"one of: {', '.join(list_models())}")
    g.add_argument(
        "--weights", default=d("DEFAULT"), metavar="W",
        help="DEFAULT (public checkpoint), a checkpoint path (a prunegym pretrain model.pt too), or None",
    )  # fmt: skip
    g.add_argument("--dataset", default=d("cifar10"), choices=list_datasets(), help="dataset")
    g.add_argument(
        "--data-dir", default=d(None), metavar="DIR",
        help="data root (default: $PRUNEGYM_DATA, else ~/.cache/prunegym/data)",
    )  # fmt: skip
    g.add_argument(
        "--download", action=argparse.BooleanOptionalAction, default=d(True),
        help="download CIFAR into the data root when it is not there",
    )  # fmt: skip
    g = p.add_argument_group("pruning")
    setting(g, "mode", choices=list(MODES), note="the static agent alone wins the fair table at one epoch")
    setting(g, "budget", type=_fraction)
    setting(g, "param_budget", type=_fraction)
    setting(g, "tradeoff")
    g = p.add_argument_group("agents")
    g.add_argument(
        "--algo",
        default=d("ppo"),
        metavar="ALGO",
        help="algorithm of the agents: a registered name (agents.algos.list_algos) or package.module:Class",
    )
    g.add_argument(
        "--static-algo", default=d(None), metavar="ALGO", help="algorithm of the static agent (default: --algo)"
    )
    g.add_argument("--preset", default=d(None), help="hyperparameter preset of the YAML file (e.g. paper)")
    g.add_argument(
        "--hyperparams", nargs="+", default=d([]), metavar="KEY=VALUE",
        help="hyperparameter overrides (YAML values); prefix runtime. or static. to set one agent only",
    )  # fmt: skip
    setting(g, "n_envs", note=f"default: the YAML's n_envs, else {ScheduleConfig.n_envs}")
    g = p.add_argument_group("schedule")
    setting(g, "rounds", note=_mode_note("rounds"))
    g.add_argument(
        "--total-timesteps",
        type=int,
        default=d(None),
        help="RL timesteps of the whole run, split over rounds (and 90/10 runtime/static in joint mode)",
    )
    for steps in ("runtime_steps", "static_steps"):
        setting(g, steps, note=f"default: a share of --total-timesteps, else {getattr(ScheduleConfig, steps)}")
    setting(g, "gate_epochs", metavar=("A", "B"), note=_mode_note("gate_epochs"))
    setting(g, "cnn_epochs", note=_mode_note("cnn_epochs"))
    setting(g, "cnn_lr")
    setting(g, "weight_decay")
    setting(g, "gate_prune")
    setting(g, "bn_recalibration")
    setting(g, "runtime_budget", choices=["image", "mean"])
    setting(g, "static_min_keep")
    setting(g, "distill", metavar="ALPHA", note="the fair table's rows too")
    setting(g, "static_select")
    setting(g, "runtime_order", choices=list(RUNTIME_ORDERS))
    setting(g, "static_criterion")
    setting(g, "num_val")
    setting(g, "static_envs", metavar="N")
    setting(g, "static_vec", choices=list(STATIC_VEC_ENVS))
    setting(g, "checkpoint_every")
    g = p.add_argument_group("run")
    setting(g, "seed")
    setting(g, "device", note="or auto: cuda when available")
    g.add_argument(
        "--out", default=d(None), metavar="RUN_DIR", help="run directory (default: runs/<env>__<algo>__<seed>__<time>)"
    )
    g.add_argument(
        "--resume", default=d(None), metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint"
    )
    g.add_argument(
        "--test-images",
        type=int,
        default=d(None),
        help="score only this many evenly spaced test images at the end (quick runs)",
    )
    g.add_argument(
        "--reference", action=argparse.BooleanOptionalAction, default=d(True),
        help="end with the fair table: l1 and fbs trained for the same epochs at the same MAC budget",
    )  # fmt: skip
    g.add_argument("-q", "--quiet", action="store_true", default=d(False), help="no progress bars, warnings only")
    return p


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """Fill the defaults that depend on other options and check every value.

    Returns:
        A plain dict of every setting (what ``config.json`` stores under ``"args"``).

    Raises:
        UsageError: a value is out of range or options contradict each other.
    """
    cfg = common_settings(args)
    if cfg.get("static_algo") is None:
        cfg["static_algo"] = cfg["algo"]
    mode = cfg["mode"]
    for key, value in schedule_defaults(mode).items():  # one epoch of CNN training in every mode
        if cfg.get(key) is None:
            cfg[key] = list(value) if isinstance(value, tuple) else value
    rounds = int(cfg["rounds"])
    if rounds < 1:
        raise UsageError(f"--rounds must be >= 1, got {rounds}")
    total = cfg.get("total_timesteps")
    if total is not None:
        if total < 1:
            raise UsageError(f"--total-timesteps must be positive, got {total}")
        per_round = total / rounds
        share = {"runtime": 0.0, "static": 1.0}.get(mode, STATIC_SHARE)
        cfg.setdefault("runtime_steps", None)
        cfg.setdefault("static_steps", None)
        if cfg["runtime_steps"] is None:
            cfg["runtime_steps"] = int(round(per_round * (1.0 - share)))
        if cfg["static_steps"] is None:
            cfg["static_steps"] = int(round(per_round * share))
    if cfg.get("runtime_steps") is None:
        cfg["runtime_steps"] = ScheduleConfig.runtime_steps
    if cfg.get("static_steps") is None:
        cfg["static_steps"] = ScheduleConfig.static_steps
    if cfg.get("out") is None:
        env = {"runtime": RUNTIME_ENV_ID, "static": STATIC_ENV_ID}.get(mode, "JointPruning")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        cfg["out"] = str(
            Path("runs") / f"{env.split('/')[-1]}__{cfg['algo'].replace(':', '.')}__{cfg['seed']}__{stamp}"
        )
    if cfg.get("test_images") is not None and cfg["test_images"] < 1:
        raise UsageError("--test-images must be positive")
    if cfg.get("n_envs") is not None and cfg["n_envs"] < 1:
        raise UsageError(
            f"--n-envs must be >= 1 (images per runtime-env batch), got {cfg['n_envs']}; "
            f"leave it out to use the hyperparameter file's n_envs (else {ScheduleConfig.n_envs})"
        )
    try:
        schedule = config_from_dict({**cfg, "n_envs": cfg.get("n_envs") or ScheduleConfig.n_envs})
    except ValueError as err:
        raise UsageError(str(err)) from err
    del schedule
    return cfg


def _split_overrides(overrides: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"runtime": [], "static": []}
    for text in overrides:
        role, dot, rest = text.partition(".")
        if dot and role in out and "=" in rest:
            out[role].append(rest)
        else:
            out["runtime"].append(text)
            out["static"].append(text)
    return out


def agent_specs(cfg: dict[str, Any]) -> dict[str, AgentSpec | None]:
    """The two agents' algorithms and resolved hyperparameters (``None`` for an agent the mode does not train).

    Raises:
        UsageError: unknown algorithm, preset, or a malformed override.
    """
    overrides = _split_overrides(cfg.get("hyperparams") or [])
    specs: dict[str, AgentSpec | None] = {"runtime": None, "static": None}
    for role, env_id, algo in (("runtime", RUNTIME_ENV_ID, cfg["algo"]), ("static", STATIC_ENV_ID, cfg["static_algo"])):
        if (role == "runtime" and cfg["mode"] == "static") or (role == "static" and cfg["mode"] == "runtime"):
            continue
        try:
            spec = get_algo(algo)
            has_file = ":" not in algo
            hp: dict[str, Any] = {}
            if has_file:
                try:
                    hp = load_hyperparams(spec.name, env_id, preset=cfg.get("preset"), overrides=overrides[role])
                except FileNotFoundError:
                    has_file = False
            if not has_file:
                if cfg.get("preset"):
                    raise UsageError(f"--preset needs a hyperparameter file for {algo}; it has none")
                from .hyperparams import apply_overrides

                hp = apply_overrides({}, overrides[role])
        except (KeyError, ValueError, TypeError, ImportError, AttributeError) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            raise UsageError(str(message)) from err
        specs[role] = AgentSpec(algo, hp)
    return specs


# -----------------------------------------------------------------------------------------------------------
# the run
# -----------------------------------------------------------------------------------------------------------


def _load_data(cfg: dict[str, Any]) -> dict[str, ImageDataset]:
    try:
        return {
            split: get_dataset(
                cfg["dataset"], split=split, root=cfg.get("data_dir"), download=bool(cfg.get("download"))
            )
            for split in ("train", "val", "test")
        }
    except FileNotFoundError as err:
        hint = "" if cfg.get("download") else " (or pass --download)"
        raise UsageError(f"{err}{hint}") from err
    except ValueError as err:  # a malformed .npz: the message names the file and the expected format
        raise UsageError(str(err)) from err


def _load_model(cfg: dict[str, Any], num_classes: int) -> nn.Module:
    """The gated base model: a PruneGym model file as it is, else the registry model with ``--weights``, gated."""
    weights = cfg["weights"]
    try:
        if isinstance(weights, str) and weights != "DEFAULT" and Path(weights).is_file():
            obj = load_checkpoint_file(weights)
            if isinstance(obj, dict) and "arch" in obj and "state_dict" in obj:
                if obj["arch"] != cfg["model"]:
                    raise UsageError(
                        f"{weights} holds a {obj['arch']}, not a {cfg['model']}; pass --model {obj['arch']}"
                    )
                model = load_model(weights)
                return model if is_gated(model) else gate_model(model, inplace=True)
        model = get_model(cfg["model"], num_classes=num_classes, weights=weights)
    except FileNotFoundError:
        raise
    except (ValueError, OSError, RuntimeError, KeyError) as err:
        raise UsageError(str(err)) from err
    return gate_model(model, inplace=True)


def fair_reference(cfg: dict[str, Any], run_dir: Path, epochs: float, num_classes: int) -> dict[str, dict[str, Any]]:
    """The hand-designed rows of the fair protocol beside the run: static ``l1`` and runtime ``fbs``.

    Both start from the run's base model (the same weights; a random base is saved to ``base.pt`` first so the
    rows see the very same one), train for the run's own ``epochs`` of CNN training with the protocol's recipe
    (:mod:`agents.protocol`: SGD, Nesterov, cosine over all of ``E``, the run's ``cnn_lr``) and meet the run's MAC
    budget; they are scored on the same test images. Results go to ``<run_dir>/reference/``.

    Returns:
        ``{row name: RowResult as a dict}``.
    """
    from .protocol import Recipe, run_protocol

    weights = cfg["weights"]
    if weights is None or str(weights) == "None":  # a random base: the rows must start from the same one
        seed_everything(cfg["seed"])  # as run() did before it built the base
        plain = get_model(cfg["model"], num_classes=num_classes)
        path = save_model(run_dir / BASE_FILE, plain, arch=cfg["model"], num_classes=num_classes, gated=False,
                          predictor=False)  # fmt: skip
        weights = str(path)
    rows = run_protocol(
        model=cfg["model"], weights=weights, dataset=cfg["dataset"], data_dir=cfg.get("data_dir"),
        budgets=[float(cfg["budget"])], epochs=[float(epochs)], seeds=[int(cfg["seed"])], rows=list(REFERENCE_ROWS),
        recipe=Recipe(lr=float(cfg["cnn_lr"]), distill=float(cfg.get("distill") or 0.0)),
        test_images=cfg.get("test_images"), out_dir=run_dir / "reference",
        device=cfg["device"], progress=not cfg["quiet"],
    )  # fmt: skip
    return {r.row: dataclasses.asdict(r) for r in rows}


def _latency_ms(model: nn.Module, repeats: int = 30) -> float:
    """Median batch-1 forward time (ms) on random inputs."""
    x = torch.randn(repeats + 3, 1, 3, 32, 32)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 3):
            t0 = time.perf_counter()
            model(x[i])
            if i >= 3:
                times.append(1000.0 * (time.perf_counter() - t0))
    return float(np.median(times))


def run(cfg: dict[str, Any], run_dir: Path, *, resume: bool = False, argv: Sequence[str] | None = None) -> dict:
    """Run a resolved config (:func:`resolve_config`) into ``run_dir``; return what ``results.json`` holds.

    Raises:
        UsageError: bad names, data or weights that cannot be found or do not fit, a broken checkpoint.
    """
    t_start = time.perf_counter()
    specs = agent_specs(cfg)
    data = _load_data(cfg)
    num_classes = data["train"].num_classes
    seed_everything(cfg["seed"])
    model = _load_model(cfg, num_classes).to(cfg["device"])
    data = {split: dataset_for_model(ds, model) for split, ds in data.items()}
    hp_envs = specs["runtime"].hyperparams.get("n_envs") if specs["runtime"] is not None else None
    n_envs = next((int(v) for v in (cfg.get("n_envs"), hp_envs) if v is not None), ScheduleConfig.n_envs)
    try:
        schedule = config_from_dict({**cfg, "n_envs": n_envs})
    except ValueError as err:  # e.g. runtime.n_envs=0 from --hyperparams
        raise UsageError(str(err)) from err
    run_dir.mkdir(parents=True, exist_ok=True)

    record = command_record(run_dir, cfg, ["python", "train_agent.py"], argv, resume=resume)
    record["schedule"] = config_to_dict(schedule)
    record["phases"] = [p.name for p in schedule.phases()]
    record["agents"] = {
        r: None if s is None else {"algo": s.algo, "hyperparams": s.hyperparams} for r, s in specs.items()
    }
    write_json(run_dir / CONFIG_FILE, record)

    teacher = copy.deepcopy(model).eval() if schedule.distill > 0 else None  # the base, before any training
    trainer = JointTrainer(
        model, arch=cfg["model"], num_classes=num_classes, data={"train": data["train"], "val": data["val"]},
        config=schedule, runtime_agent=specs["runtime"], static_agent=specs["static"], run_dir=run_dir,
        progress=not cfg["quiet"], teacher=teacher,
    )  # fmt: skip
    test = data["test"].strided(cfg.get("test_images"), what="test_images")
    has_checkpoint = resume and (run_dir / "checkpoint.pt").is_file()
    if not has_checkpoint:
        try:  # algorithm / hyperparameter mistakes surface here, before anything is trained or saved
            trainer.build_agents()
        except (ValueError, TypeError) as err:
            raise UsageError(str(err)) from err
        t0 = time.perf_counter()
        trainer.history["base"] = {
            "val": evaluate(model, data["val"], cost_model=trainer.cost_model),
            "test": evaluate(model, test, cost_model=trainer.cost_model),
            "time_s": time.perf_counter() - t0,
        }
    try:
        trainer.run(resume=resume)
    except (ValueError, FileNotFoundError) as err:
        if resume:
            raise UsageError(f"cannot resume {run_dir}: {err}") from err
        raise
    base = trainer.history["base"]

    # -- final evaluation, reference, export ---------------------------------------------------------------
    t0 = time.perf_counter()
    pruned = {"val": trainer.evaluate_plan(data["val"]), "test": trainer.evaluate_plan(test)}
    eval_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    reference: dict[str, dict[str, Any]] = {}
    if cfg.get("reference", True):
        reference = fair_reference(cfg, run_dir, schedule.cnn_budget_epochs, num_classes)
    reference_s = time.perf_counter() - t0

    plan = None
    if trainer.static_keep:
        plan = PruningPlan(
            static_keep=trainer.static_keep, tradeoff=trainer.tradeoff, static_scores=trainer.order_scores(),
            runtime_order=schedule.runtime_order,
        )  # fmt: skip
    elif trainer.runtime_model is not None:  # runtime only: the exported units prune at R_r = 1, as in training
        plan = PruningPlan(tradeoff=1.0, static_scores=trainer.order_scores(), runtime_order=schedule.runtime_order)
    exported = export_static(trainer.model, plan)
    save_exported(
        run_dir / EXPORTED_FILE, exported, arch=cfg["model"], num_classes=num_classes,
        static_keep=trainer.static_keep, tradeoff=trainer.tradeoff, budget=cfg["budget"],
    )  # fmt: skip
    save_model(
        run_dir / MODEL_FILE,
        trainer.model,
        arch=cfg["model"],
        num_classes=num_classes,
        gated=True,
        predictor=True,
        static_keep=trainer.static_keep,
        tradeoff=trainer.tradeoff,
    )
    for role, agent in (("runtime", trainer.runtime_model), ("static", trainer.static_model)):
        if agent is not None:
            tmp = run_dir / f"{role}_agent.tmp.zip"
            agent.save(str(tmp))
            os.replace(tmp, run_dir / AGENT_FILES[role])
    source = trainer.runtime_source() if trainer.runtime_model is not None else None
    dynamic = DynamicModel(exported, source)
    if source is not None:
        source.bind(dynamic)
    latency = {  # batch 1, random inputs: the deployable pruned model vs the plain architecture
        "pruned_b1_ms": _latency_ms(dynamic.eval()),
        "base_b1_ms": _latency_ms(get_model(cfg["model"], num_classes=num_classes).eval()),
    }

    results = {
        "model": cfg["model"],
        "dataset": cfg["dataset"],
        "mode": cfg["mode"],
        "budget": cfg["budget"],
        "param_budget": cfg.get("param_budget"),
        "tradeoff": trainer.tradeoff,
        "algo": {r: None if s is None else s.algo for r, s in specs.items()},
        "base": base,
        "pruned": pruned,
        "reference": reference,
        "cnn_epochs_total": schedule.cnn_budget_epochs,
        "static_keep": trainer.static_keep,
        "static_scores": trainer.static_scores,
        "action_offset": trainer.action_offset,
        "budget_guard": trainer.history.get("budget_guard", []),
        "latency": latency,
        "test_images": len(test),
        "phases": trainer.history,
        "times": {"final_eval_s": eval_s, "reference_s": reference_s, "total_s": time.perf_counter() - t_start},
        "resumed": resume,
    }
    write_json(run_dir / RESULTS_FILE, results)
    return results


def _print_table(results: dict[str, Any], run_dir: Path) -> None:
    """The fair table: the agents' model beside ``l1`` and ``fbs`` at the same MAC budget and the same E."""
    from .protocol import BUDGET_TOLERANCE

    e = results["cnn_epochs_total"]
    budget = results["budget"]
    rows: list[tuple[str, float, float, float, float, str]] = []
    base = results["base"]["test"]
    rows.append(("base (unpruned)", base["top1"], base["macs_fraction"], base["macs_fraction_max"],
                 base["params_fraction"], "-"))  # fmt: skip
    learned = results["pruned"]["test"]
    meets = learned["macs_fraction"] <= budget + BUDGET_TOLERANCE
    rows.append((f"learned ({results['mode']})", learned["top1"], learned["macs_fraction"],
                 learned["macs_fraction_max"], learned["params_fraction"], "yes" if meets else "MISSES"))  # fmt: skip
    for name, r in results.get("reference", {}).items():
        rows.append((f"{name} ({r['policy']})", r["test_top1"], r["mac_fraction"], r["mac_fraction_max"],
                     r["params_fraction"], "yes" if r["meets_budget"] else "MISSES"))  # fmt: skip
    width = max(len(r[0]) for r in rows) + 2
    print(f"{'':<{width}}{'test top-1':>11}{'MAC frac':>10}{'max MAC':>9}{'params':>8}  budget met")
    for name, top1, mac, mac_max, params, ok in rows:
        print(f"{name:<{width}}{top1:>11.2f}{mac:>10.4f}{mac_max:>9.4f}{params:>8.4f}  {ok}")
    print(
        f"MAC budget {budget} (mean per-image fraction, +{BUDGET_TOLERANCE}), {e:g} epoch(s) of CNN training for "
        f"every pruned row, mode {results['mode']}, R_r {results['tradeoff']}; test on {results['test_images']} "
        f"images; {results['times']['total_s'] / 60:.1f} min"
    )
    print(f"run directory: {run_dir}")


def load_run(run_dir: str | os.PathLike[str], *, dynamic: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a finished run's pruned model with its agents in charge.

    Args:
        run_dir: A directory written by ``train_agent.py``.
        dynamic: Return a :class:`pruning.export.DynamicModel` (exported static model + runtime agent; compact
            at batch 1); ``False`` returns the masked gated CNN with the agents' plan set.

    Returns:
        ``(model, results)``: the model in eval mode and the run's ``results.json``. The runtime agent runs
        fused into plain PyTorch (:func:`agents.fused.runtime_source`; through ``predict``, with a logged
        warning, when its policy cannot be fused).

    Raises:
        FileNotFoundError: the run is not finished (no ``results.json``) or a file is missing.
    """
    from .fused import runtime_source
    from .schedule import RUNTIME_MIN_KEEP as min_keep

    root = Path(run_dir)
    if not (root / RESULTS_FILE).is_file():
        raise FileNotFoundError(f"{root} has no {RESULTS_FILE}: the run did not finish (resume it with --resume)")
    results = json.loads((root / RESULTS_FILE).read_text())
    config = json.loads((root / CONFIG_FILE).read_text())
    cnn = load_model(root / MODEL_FILE)
    source = None
    if (root / AGENT_FILES["runtime"]).is_file():
        algo = config["agents"]["runtime"]["algo"]
        agent = get_algo(algo).load(root / AGENT_FILES["runtime"], device="cpu")
        source = runtime_source(
            agent, cnn, budget=float(results["budget"]), min_keep=min_keep,
            action_offset=float(results.get("action_offset", 0.0)),
        )  # fmt: skip
    if dynamic:
        model = DynamicModel(load_exported(root / EXPORTED_FILE), source)
        if source is not None:
            source.bind(model)
        return model.eval(), results
    static = results["static_keep"]
    tradeoff = float(results["tradeoff"])
    raw_scores = results.get("static_scores")
    order = str(config.get("schedule", {}).get("runtime_order", "u_r"))
    ranked = bool(static) or (order == "prefix" and source is not None)  # what the scores rank
    scores = None if not ranked or raw_scores is None else [torch.tensor(v, dtype=torch.float32) for v in raw_scores]
    if source is None:
        plan = PruningPlan(static_keep=static, static_scores=scores) if static else PruningPlan()
    else:
        plan = PruningPlan(
            static_keep=static, runtime_keep=source, tradeoff=tradeoff if static else 1.0, static_scores=scores,
            runtime_order=order,
        )  # fmt: skip
    set_plan(cnn, plan)
    return cnn.eval(), results


def main(argv: list[str] | None = None) -> int:
    """Train pruning agents with Chen et al.'s schedule (``python train_agent.py``, ``prunegym train``).

    Returns:
        0 on success, 2 on a usage error (one line on stderr, nothing half-written left behind), 130 when
        interrupted (the run directory can be resumed).
    """
    return run_command(
        argv, prog="train_agent.py", build_parser=build_parser, resolve=resolve_config, run=run,
        report=_print_table, identity_keys=IDENTITY_KEYS,
    )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
