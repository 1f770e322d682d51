"""``prunegym pretrain``: train (or fine-tune) a CIFAR model, gate it, and run the gate stage.

The output is the base model of every pruning experiment: a gated model (``GatedConv`` units with runtime
predictors ``u_r`` and static importances ``u_s``) fine-tuned with no pruning, as steps 1-3 of the recipe of
Chen, Chen & Pan, "Storage Efficient and Dynamic Flexible Runtime Channel Pruning via Deep Reinforcement Learning"
(NeurIPS 2020, Sec. 4.1).

Steps:

1. load the model (``--model``, ``--weights``) and the data (``--dataset``, ``--data-dir``), normalised with
   the statistics the weights expect;
2. evaluate the base model's top-1 on the validation and test splits;
3. train it for ``--epochs`` epochs (SGD, Nesterov momentum, cosine learning rate; skipped when 0, the default
   when weights are given);
4. gate it and fine-tune with Adam at ``--gate-lr``: phase A (backbone + predictors, ``u_s`` frozen) for the
   first ``--gate-epochs`` value, phase B (``u_s`` too) for the second (skipped with ``--no-gate``);
5. evaluate again and write the run directory.

Run directory (``--out``; default ``runs/pretrain__<model>__<seed>__<time>``):

==================  ========================================================================================
``config.json``     resolved arguments and the command line
``checkpoint.pt``   training state after every epoch (``--resume RUN_DIR`` continues from it)
``model.pt``        the final model, for :func:`pruning.checkpoint.load_model`
``results.json``    top-1 and loss on val and test before and after, per-stage history, times
``events.out.*``    TensorBoard scalars (``train/``, ``val/``, ``gate/predictor/``, ``gate/static/``)
==================  ========================================================================================

Examples::

    python -m pruning.pretrain --model resnet20 --weights DEFAULT --data-dir data/cifar10
    prunegym pretrain --model m_cifarnet --epochs 30 --gate-epochs 2 1 --device cuda
    prunegym pretrain --model tiny_cnn --dataset synthetic --epochs 1 --gate-epochs 1 --out /tmp/run
    prunegym pretrain --resume runs/pretrain__resnet20__0__20240101-120000 --epochs 40
"""

from __future__ import annotations

import argparse
import functools
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning.checkpoint import save_model
from pruning.cli import HelpFormatter
from pruning.data import ImageDataset, get_dataset, list_datasets
from pruning.gating import gate_model, gated_units, is_gated
from pruning.models import get_model, list_models
from pruning.runs import CONFIG_FILE, UsageError, command_record, common_settings, run_command, write_json
from pruning.train import (
    Stage,
    TrainConfig,
    dataset_for_model,
    evaluate,
    fit_schedule,
    gate_schedule,
    load_training_state,
    save_training_state,
    seed_everything,
)

__all__ = ["DEFAULT_EPOCHS", "build_parser", "main", "resolve_config", "run"]

log = logging.getLogger("pruning.pretrain")  # not "__main__" under python -m

#: Base-training epochs when no weights are given. The published CIFAR ResNet recipe is 160-200 epochs;
#: 30 epochs of cosine-annealed SGD get within a few points of it at a sixth of the cost.
DEFAULT_EPOCHS = 30
#: Base learning rate from scratch (He et al. 2016) and when fine-tuning given weights (the recipe of the
#: ``*_cifar10jpeg.pt`` checkpoints the benchmarks use: the public ones fine-tuned on a JPEG copy of CIFAR-10).
DEFAULT_LR_SCRATCH, DEFAULT_LR_FINETUNE = 0.1, 0.02
#: Settings that define a run; ``--resume`` refuses to change them.
IDENTITY_KEYS = ("model", "weights", "num_classes", "dataset", "seed", "no_gate")

#: Images per evaluation batch (``--eval-batches`` counts these).
EVAL_BATCH_SIZE = 500

CHECKPOINT_FILE, MODEL_FILE, RESULTS_FILE = "checkpoint.pt", "model.pt", "results.json"


def build_parser(*, defaults: bool = True) -> argparse.ArgumentParser:
    """The argument parser of ``prunegym pretrain``.

    Args:
        defaults: With ``False`` every default is ``argparse.SUPPRESS``, so parsing yields only the options
            actually given (used to apply overrides on ``--resume``).
    """

    def d(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    p = argparse.ArgumentParser(
        prog="prunegym pretrain",
        description="Train or fine-tune a CIFAR model, gate it and fine-tune its channel-importance "
        "predictors (Chen et al.'s gate stage); writes model.pt, results.json, config.json and TensorBoard "
        "events into the run directory.",
        formatter_class=HelpFormatter,
        argument_default=None if defaults else argparse.SUPPRESS,
    )
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=d("resnet20"), metavar="NAME", help=f"one of: {', '.join(list_models())}")
    g.add_argument(
        "--weights", default=d(None), metavar="W",
        help="None (random init), DEFAULT (the model's public checkpoint) or a checkpoint path",
    )  # fmt: skip
    g.add_argument("--num-classes", type=int, default=d(None), help="classifier outputs (default: the dataset's)")
    g.add_argument("--dataset", default=d("cifar10"), choices=list_datasets(), help="dataset")
    g.add_argument(
        "--data-dir", default=d(None), metavar="DIR",
        help="data root (default: $PRUNEGYM_DATA, else ~/.cache/prunegym/data)",
    )  # fmt: skip
    g.add_argument("--download", action="store_true", default=d(False), help="allow downloading CIFAR")
    g = p.add_argument_group("training")
    g.add_argument(
        "--epochs", type=int, default=d(None),
        help=f"base training / fine-tuning epochs (default: 0 with --weights, else {DEFAULT_EPOCHS})",
    )  # fmt: skip
    g.add_argument(
        "--lr", type=float, default=d(None),
        help=f"base SGD learning rate (default: {DEFAULT_LR_FINETUNE} with --weights, else {DEFAULT_LR_SCRATCH})",
    )  # fmt: skip
    g.add_argument("--batch-size", type=int, default=d(128), help="batch size of every stage")
    g.add_argument("--weight-decay", type=float, default=d(1e-4), help="base training L2 on weights")
    g.add_argument(
        "--gate-epochs", type=int, nargs="+", default=d([1, 1]), metavar="N",
        help="gate-stage epochs: phase A (predictors, u_s frozen) and phase B (u_s too); one value sets both",
    )  # fmt: skip
    g.add_argument(
        "--gate-lr",
        type=float,
        default=d(1e-4),
        help="Adam learning rate of the gate stage (default: 1e-4; Chen et al. use 1e-3, which on a trained ResNet-20 "
        "cost 6.5 points of val top-1 after one epoch per phase on 3k images, against 1.2 at 1e-4)",
    )
    g.add_argument("--no-gate", action="store_true", default=d(False), help="skip gating and the gate stage")
    g.add_argument("--seed", type=int, default=d(0), help="seed of model init, data order and augmentation")
    g.add_argument("--device", default=d("auto"), help="cpu, cuda, cuda:N, or auto (cuda when available)")
    g = p.add_argument_group("run")
    g.add_argument(
        "--out", default=d(None), metavar="RUN_DIR",
        help="run directory (default: runs/pretrain__<model>__<seed>__<time>)",
    )  # fmt: skip
    g.add_argument(
        "--resume", default=d(None), metavar="RUN_DIR",
        help="continue an interrupted run from its checkpoint; options given again override its config",
    )  # fmt: skip
    g.add_argument(
        "--eval-batches", type=int, default=d(None), metavar="N",
        help="score only N×500 evenly spaced images of val and test in each evaluation (quick runs)",
    )  # fmt: skip
    g.add_argument("--log-every", type=int, default=d(50), help="steps between TensorBoard points")
    g.add_argument("-q", "--quiet", action="store_true", default=d(False), help="no progress bars, warnings only")
    return p


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """Fill the defaults that depend on other options and check the values.

    Args:
        args: Parsed arguments of :func:`build_parser`.

    Returns:
        A plain dict of every setting (what ``config.json`` stores under ``"args"``).

    Raises:
        UsageError: A value is out of range.
    """
    cfg = common_settings(args)
    weights = cfg["weights"]
    if cfg.get("epochs") is None:
        cfg["epochs"] = 0 if weights is not None else DEFAULT_EPOCHS
    if cfg.get("lr") is None:
        cfg["lr"] = DEFAULT_LR_FINETUNE if weights is not None else DEFAULT_LR_SCRATCH
    gate_epochs = list(cfg.get("gate_epochs") or [1, 1])
    if len(gate_epochs) == 1:
        gate_epochs = gate_epochs * 2
    if len(gate_epochs) != 2:
        raise UsageError(f"--gate-epochs takes one or two integers, got {gate_epochs}")
    cfg["gate_epochs"] = [int(v) for v in gate_epochs]
    for key in ("epochs", "batch_size", "log_every"):
        if int(cfg[key]) < (1 if key != "epochs" else 0):
            raise UsageError(f"--{key.replace('_', '-')} must be {'>= 0' if key == 'epochs' else 'positive'}")
    if min(cfg["gate_epochs"]) < 0:
        raise UsageError("--gate-epochs must be >= 0")
    if cfg.get("eval_batches") is not None and cfg["eval_batches"] <= 0:
        raise UsageError("--eval-batches must be positive")
    if cfg.get("out") is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        cfg["out"] = str(Path("runs") / f"pretrain__{cfg['model']}__{cfg['seed']}__{stamp}")
    return cfg


def _load_data(cfg: dict[str, Any]) -> dict[str, ImageDataset]:
    kwargs: dict[str, Any] = {}
    if cfg["dataset"] == "synthetic" and cfg.get("num_classes"):
        kwargs["num_classes"] = int(cfg["num_classes"])  # synthetic data has as many classes as asked for
    return {
        split: get_dataset(
            cfg["dataset"], split=split, root=cfg.get("data_dir"), download=bool(cfg.get("download")), **kwargs
        )
        for split in ("train", "val", "test")
    }


def _stages(cfg: dict[str, Any]) -> list[Stage]:
    stages = []
    if cfg["epochs"] > 0:
        stages.append(
            Stage(
                "base",
                TrainConfig(
                    epochs=cfg["epochs"],
                    batch_size=cfg["batch_size"],
                    optimizer="sgd",
                    lr=cfg["lr"],
                    weight_decay=cfg["weight_decay"],
                    schedule="cosine",
                    seed=cfg["seed"],
                    device=cfg["device"],
                    log_every=cfg["log_every"],
                ),
            )
        )
    if not cfg["no_gate"]:
        stages += gate_schedule(
            predictor_epochs=cfg["gate_epochs"][0], static_epochs=cfg["gate_epochs"][1], lr=cfg["gate_lr"],
            batch_size=cfg["batch_size"], seed=cfg["seed"] + 1000, device=cfg["device"],
            log_every=cfg["log_every"],
            gate=functools.partial(gate_model, predictor=True, inplace=True),
        )  # fmt: skip
    return stages


def _spread_subset(dataset: ImageDataset, size: int) -> ImageDataset:
    """``size`` evenly spaced samples (the CIFAR test set is sorted by class: its first images are all planes)."""
    n = len(dataset)
    if size >= n:
        return dataset
    return dataset.subset(torch.arange(size) * n // size)


def _evaluate_splits(
    model: nn.Module, data: dict[str, ImageDataset], cfg: dict[str, Any], label: str
) -> dict[str, dict[str, float]]:
    out = {}
    for split in ("val", "test"):
        out[split] = evaluate(
            model, data[split], device=cfg["device"],
            progress=not cfg["quiet"], desc=f"{label} {split}",
        )  # fmt: skip
        log.info("%s %s top-1 %.2f%% (loss %.4f, %d images)", label, split, out[split]["top1"],
                 out[split]["loss"], out[split]["n"])  # fmt: skip
    return out


def _print_table(results: dict[str, Any], run_dir: Path) -> None:
    rows = [("base", results["base"]), ("after" + (" (gated)" if results["gated"] else ""), results["final"])]
    width = max(len(name) for name, _ in rows) + 2
    print(f"{'':<{width}}{'val top-1':>10}{'test top-1':>12}")
    for name, r in rows:
        print(f"{name:<{width}}{r['val']['top1']:>10.2f}{r['test']['top1']:>12.2f}")
    print(f"model: {run_dir / MODEL_FILE}")


def run(cfg: dict[str, Any], run_dir: Path, *, resume: bool = False, argv: list[str] | None = None) -> dict:
    """Run ``prunegym pretrain`` with a resolved config (see :func:`resolve_config`).

    Args:
        cfg: The settings.
        run_dir: The run directory (created).
        resume: Continue from ``run_dir/checkpoint.pt`` when it exists.
        argv: The command line, stored in ``config.json``.

    Returns:
        The results written to ``results.json``.

    Raises:
        FileNotFoundError: The data or the weights are missing (the message says where it looked).
        UsageError: The model or dataset name is unknown, the weights or the checkpoint do not fit, a data
            file is malformed.
    """
    from torch.utils.tensorboard import SummaryWriter  # slow import: only when a run starts

    t_start = time.perf_counter()
    progress = not cfg["quiet"]
    ckpt_path = run_dir / CHECKPOINT_FILE
    state: dict[str, Any] | None = None
    try:  # everything that depends on files or names given by the user: report it in one line
        data = _load_data(cfg)
        num_classes = int(cfg.get("num_classes") or data["train"].num_classes)
        if num_classes != data["train"].num_classes:
            raise UsageError(
                f"--num-classes {num_classes} does not match {cfg['dataset']}, "
                f"which has {data['train'].num_classes} classes"
            )
        stages = _stages(cfg)
        if resume and ckpt_path.is_file():
            model, state = load_training_state(ckpt_path)
            base = state["extra"]["base"]
            names = [st.name for st in stages]
            i = int(state["stage_index"])
            if i >= len(names) or names[i] != state["stage"]:
                raise UsageError(
                    f"cannot resume {run_dir}: its checkpoint is in stage {state['stage']!r}, which these "
                    f"options do not run (stages: {', '.join(names) or 'none'}); keep --epochs/--gate-epochs > 0"
                )
            log.info("resuming %s (stage %s after %d epochs)", run_dir, state["stage"], state["epoch"])
        else:
            seed_everything(cfg["seed"])
            model = get_model(cfg["model"], num_classes=num_classes, weights=cfg["weights"])
    except FileNotFoundError:
        raise  # the data module's and the weights loader's messages already say where they looked
    except (ValueError, OSError) as err:  # unknown names, weights that do not fit, no network for DEFAULT
        raise UsageError(str(err)) from err
    data = {split: dataset_for_model(ds, model) for split, ds in data.items()}
    if cfg.get("eval_batches"):
        for split in ("val", "test"):
            data[split] = _spread_subset(data[split], cfg["eval_batches"] * EVAL_BATCH_SIZE)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = command_record(run_dir, cfg, ["prunegym", "pretrain"], argv, resume=resume)
    write_json(run_dir / CONFIG_FILE, record)
    writer = SummaryWriter(log_dir=str(run_dir))
    try:
        if state is None:
            table = "\n".join(["| setting | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in cfg.items())])
            writer.add_text("config", table)
            t0 = time.perf_counter()
            base = _evaluate_splits(model, data, cfg, "base")
            base_eval_s = time.perf_counter() - t0
            if stages:
                save_training_state(
                    ckpt_path, model, arch=cfg["model"], num_classes=num_classes, stage=stages[0].name,
                    stage_index=0, epoch=0, prepared=False, extra={"base": base, "base_eval_s": base_eval_s},
                )  # fmt: skip
        else:
            base_eval_s = float(state["extra"].get("base_eval_s", 0.0))
        t0 = time.perf_counter()
        history: dict[str, Any] = {}
        if stages:
            model, history = fit_schedule(
                model, stages, data["train"], val_set=data["val"], writer=writer, progress=progress,
                checkpoint_path=ckpt_path, arch=cfg["model"], num_classes=num_classes,
                extra={"base": base, "base_eval_s": base_eval_s}, resume=state,
            )  # fmt: skip
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        final = _evaluate_splits(model, data, cfg, "after")
        final_eval_s = time.perf_counter() - t0
        for split in ("val", "test"):
            writer.add_scalar(f"final/{split}_top1", final[split]["top1"], 0)
    finally:
        writer.close()
    gated = is_gated(model)
    predictor = gated and any(u.predictor is not None for u in gated_units(model))
    save_model(
        run_dir / MODEL_FILE, model, arch=cfg["model"], num_classes=num_classes, gated=gated, predictor=predictor,
        val_top1=final["val"]["top1"], test_top1=final["test"]["top1"], recipe=cfg,
    )  # fmt: skip
    results = {
        "model": cfg["model"],
        "dataset": cfg["dataset"],
        "num_classes": num_classes,
        "gated": gated,
        "base": base,
        "final": final,
        "stages": history,
        "times": {
            "base_eval_s": base_eval_s,
            "train_s": train_s,
            "final_eval_s": final_eval_s,
            "total_s": time.perf_counter() - t_start,
            "stages_s": {name: entry.get("time_s", 0.0) for name, entry in history.items()},
        },
        "resumed": state is not None,
    }
    write_json(run_dir / RESULTS_FILE, results)
    return results


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``prunegym pretrain`` / ``python -m pruning.pretrain``.

    Args:
        argv: Command-line arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        0 on success, 2 on a usage error or missing data/weights (one line on stderr), 130 when interrupted.
    """
    return run_command(
        argv, prog="prunegym pretrain", build_parser=build_parser, resolve=resolve_config, run=run,
        report=_print_table, identity_keys=IDENTITY_KEYS, checkpoint_file=CHECKPOINT_FILE,
    )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
