"""``prunegym sweep``: many ``train_agent.py`` runs (seeds × budgets × algorithms × hyperparameters) with Ray Tune.

Every combination of the axes is one Tune trial (``tune.grid_search`` over each axis) that runs
``train_agent.py`` in a Ray worker: the same :func:`agents.cli.build_parser` → :func:`agents.cli.resolve_config`
→ :func:`agents.cli.run` path, on the command line ``TRAIN_ARGS --seed S --budget B --algo A --hyperparams ...
--out OUT/<trial name>``, so each trial leaves a normal run directory (``--resume`` and ``load_run`` work on it).

Axes (each option takes one or more values; an omitted axis is ``train_agent.py``'s default, a single value):

=================================  ==========================================================================
``--seeds 0 1 2``                  ``--seed`` of each run
``--budgets 0.5 0.25``             ``--budget`` (MAC fraction)
``--algos ppo a2c``                ``--algo`` (a registered name or ``package.module:Class``)
``--hyperparams KEY=V1,V2 ...``    one axis per key: the ``--hyperparams`` override ``KEY=V`` for each value;
                                   values are YAML, split at commas outside brackets
                                   (``runtime.policy_kwargs=dict(net_arch=[64,64])`` is one value); they come
                                   after any ``--hyperparams`` of the train arguments, so they win
=================================  ==========================================================================

Everything after ``--`` is passed to every run as it is (model, dataset, mode, schedule, ...); ``--seed``,
``--budget``, ``--algo``, ``--out`` and ``--resume`` are refused there (they are the sweep's). The trial name
is its axis values as given, e.g. ``ppo__budget=0.5__seed=1__learning_rate=3e-4``.

Outputs in ``--out`` (the sweep folder):

=======================  ==================================================================================
``<trial name>/``        the trial's run directory (``train_agent.py``'s files, ``results.json`` included)
``results.csv``          one row per trial, in grid order: :data:`CSV_FIELDS`, then one ``hp:KEY`` column
                         per hyperparameter axis. ``status`` is ``ok`` or ``failed``; ``error`` holds a failed
                         trial's error (an exception in the run, or the worker process dying)
``results.md``           the same rows as a markdown table
``pareto.png``           test top-1 vs MAC fraction of the finished trials, one series per algorithm and
                         hyperparameter combination (mean ± std over seeds; marker area ∝ params fraction)
``tune/``                Ray Tune's own experiment folder (its logs, per-trial ``result.json``)
=======================  ==================================================================================

A failed trial is never dropped: it is a row with ``status`` ``failed``, and ``prunegym sweep`` exits with 1.

Ray: without ``--ray`` the sweep starts a Ray instance on this machine (all its cores); ``--ray auto`` joins the
cluster this machine belongs to, ``--ray HOST:PORT`` that head node's cluster (:func:`agents.distributed.connect`;
an instance already initialised in the process is used as is). Each trial reserves ``--cpus-per-trial`` CPUs
(torch uses as many threads) and ``--gpus-per-trial`` GPUs, and runs in the command's working directory
(relative paths keep their meaning). Paths in the train arguments and ``--out`` must name the same places on
every node (a shared file system): the workers write the run directories there; the table is collected from
what the trials report to Tune. Needs the ``[ray]`` extra (``pip install "prunegym[ray]"``, with Ray Tune).

Command line::

    prunegym sweep --seeds 0 1 --budgets 0.5 0.25 --algos ppo a2c --hyperparams learning_rate=1e-4,3e-4
    prunegym sweep --seeds 0 1 2 --out runs/sweep -- --model resnet20 --mode static --cnn-epochs 2 -q
"""

from __future__ import annotations

import argparse
import csv
import itertools
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pruning.cli import HelpFormatter
from pruning.runs import CONFIG_FILE, UsageError

from .cli import build_parser, resolve_config, run
from .compare import pareto_plot
from .distributed import connect

__all__ = ["CSV_FIELDS", "SweepGrid", "main", "parse_hyperparam_axes", "run_trial", "sweep"]

log = logging.getLogger(__name__)

#: The columns of ``results.csv`` before the ``hp:KEY`` ones (test/val top-1 in %, fractions of the base model).
CSV_FIELDS = (
    "trial", "status", "error", "seed", "budget", "algo", "test_top1", "val_top1", "macs_fraction",
    "params_fraction", "base_test_top1", "seconds", "run_dir",
)  # fmt: skip
#: Metrics each trial reports to Tune at its end, from its ``results.json``.
METRICS = ("test_top1", "val_top1", "macs_fraction", "params_fraction", "base_test_top1", "seconds")
#: ``train_agent.py`` options that the sweep sets itself, with the sweep option to use instead.
SWEEP_OWNED = {"seed": "--seeds", "budget": "--budgets", "algo": "--algos", "out": "--out", "resume": "(none)"}

#: ``trainable(argv) -> results``: runs one ``train_agent.py`` command line, returns its ``results.json``.
Trainable = Callable[[list[str]], dict[str, Any]]


def run_trial(argv: list[str]) -> dict[str, Any]:
    """Run one ``train_agent.py`` command line in this process; what each sweep trial calls by default.

    Args:
        argv: ``train_agent.py``'s arguments (``--out`` included).

    Returns:
        The run's ``results.json`` content.

    Raises:
        UsageError: a bad option, missing data, or ``--out`` already holding a run.
        Exception: whatever the run raised.
    """
    cfg = resolve_config(build_parser().parse_args(argv))
    run_dir = Path(cfg["out"])
    if (run_dir / CONFIG_FILE).is_file():
        raise UsageError(f"{run_dir} already holds a run; pick another sweep --out")
    return run(cfg, run_dir, argv=argv)


def _split_values(text: str) -> list[str]:
    """``"1e-4,[1,2],x"`` → ``["1e-4", "[1,2]", "x"]``: commas inside brackets or parentheses do not split."""
    values, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            values.append(text[start:i])
            start = i + 1
    values.append(text[start:])
    return [v.strip() for v in values]


def parse_hyperparam_axes(specs: Sequence[str]) -> dict[str, list[str]]:
    """``["learning_rate=1e-4,3e-4", "runtime.n_steps=16"]`` → ``{"learning_rate": ["1e-4", "3e-4"], ...}``.

    Raises:
        UsageError: a spec without ``=``, an empty key or value, or a key given twice.
    """
    axes: dict[str, list[str]] = {}
    for spec in specs:
        key, eq, rest = spec.partition("=")
        key = key.strip()
        values = _split_values(rest)
        if not eq or not key or "" in values:
            raise UsageError(f"--hyperparams {spec!r}: expected KEY=VALUE[,VALUE...], e.g. learning_rate=1e-4,3e-4")
        if key in axes:
            raise UsageError(f"--hyperparams: {key} given twice; list all its values once, comma-separated")
        axes[key] = values
    return axes


def _train_default(option: str) -> Any:
    """``train_agent.py``'s default of ``--option`` (one place: :func:`agents.cli.build_parser`)."""
    return build_parser().get_default(option)


def _name_part(text: str) -> str:
    """A file-name-safe form of an axis value (``mypkg.algos:MyAlgo`` → ``mypkg.algos.MyAlgo``)."""
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text.replace(":", ".")).strip("_") or "_"


@dataclass(frozen=True)
class SweepGrid:
    """The axes of a sweep and the ``train_agent.py`` arguments every trial shares.

    Attributes:
        train_args: ``train_agent.py`` arguments of every trial (no ``--seed``, ``--budget``, ``--algo``,
            ``--out``, ``--resume``: :meth:`check` refuses them).
        seeds: ``--seed`` values (default: ``train_agent.py``'s, alone).
        budgets: ``--budget`` values (default: ``train_agent.py``'s, alone).
        algos: ``--algo`` values (default: ``train_agent.py``'s, alone).
        hyperparams: ``{KEY: [VALUE, ...]}``: one axis per key, each value the override ``KEY=VALUE``.
    """

    train_args: tuple[str, ...] = ()
    seeds: tuple[int, ...] = field(default_factory=lambda: (_train_default("seed"),))
    budgets: tuple[float, ...] = field(default_factory=lambda: (_train_default("budget"),))
    algos: tuple[str, ...] = field(default_factory=lambda: (_train_default("algo"),))
    hyperparams: dict[str, list[str]] = field(default_factory=dict)

    def check(self) -> None:
        """Parse the train arguments and every trial's command line as ``train_agent.py`` would.

        Raises:
            UsageError: an option the sweep owns among the train arguments, an empty axis, an invalid trial
                command line (argparse's message), or two trials with the same name.
        """
        try:
            given = vars(build_parser(defaults=False).parse_args(list(self.train_args)))
            owned = [key for key in SWEEP_OWNED if key in given]
            if owned:
                hint = ", ".join(f"--{k} (use the sweep's {SWEEP_OWNED[k]})" for k in owned)
                raise UsageError(f"these train_agent.py options are the sweep's, not for after --: {hint}")
            for axis in ("seeds", "budgets", "algos"):
                if not getattr(self, axis):
                    raise UsageError(f"--{axis} needs at least one value")
            names = [self.trial_name(t) for t in self.trials()]
            for trial in self.trials():
                resolve_config(build_parser().parse_args(self.argv(trial, Path("."))))
        except SystemExit as err:  # argparse printed the message
            raise UsageError(f"the train arguments do not parse (see above; exit code {err.code})") from err
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise UsageError(f"two trials are named {doubled[0]}: axis values must differ after making them file-safe")

    def param_space(self, tune: Any) -> dict[str, Any]:
        """Tune's ``param_space``: a ``tune.grid_search`` per axis (``tune`` is the ``ray.tune`` module)."""
        return {
            "seed": tune.grid_search(list(self.seeds)),
            "budget": tune.grid_search(list(self.budgets)),
            "algo": tune.grid_search(list(self.algos)),
            "hyperparams": {key: tune.grid_search(list(values)) for key, values in self.hyperparams.items()},
        }

    def trials(self) -> Iterator[dict[str, Any]]:
        """Every trial's config (as Tune passes it to the trainable), in grid order: algo, budget, seed, keys."""
        keys = list(self.hyperparams)
        for algo, budget, seed, *values in itertools.product(
            self.algos, self.budgets, self.seeds, *self.hyperparams.values()
        ):
            yield {"seed": seed, "budget": budget, "algo": algo, "hyperparams": dict(zip(keys, values, strict=True))}

    @staticmethod
    def trial_name(config: dict[str, Any]) -> str:
        """The trial's name and run directory name: ``ppo__budget=0.5__seed=0__learning_rate=3e-4``."""
        parts = [config["algo"], f"budget={config['budget']:g}", f"seed={config['seed']}"]
        parts += [f"{key}={value}" for key, value in config.get("hyperparams", {}).items()]
        return "__".join(_name_part(str(p)) for p in parts)

    def argv(self, config: dict[str, Any], out: Path) -> list[str]:
        """The trial's ``train_agent.py`` command line; its run directory is ``out / trial_name(config)``."""
        shared = vars(build_parser(defaults=False).parse_args(list(self.train_args))).get("hyperparams", [])
        overrides = [*shared, *(f"{key}={value}" for key, value in config.get("hyperparams", {}).items())]
        argv = [*self.train_args, "--seed", str(config["seed"]), "--budget", str(config["budget"])]
        argv += ["--algo", str(config["algo"]), "--out", str(out / self.trial_name(config))]
        return argv + (["--hyperparams", *overrides] if overrides else [])


def _tune_function(
    config: dict[str, Any], *, grid: SweepGrid, out: str, train: Trainable, threads: int, cwd: str
) -> None:
    """What each Tune trial runs: the trial's command line through ``train``, then one ``tune.report``.

    The trial runs in ``cwd`` (the driver's working directory) where this node has it, so relative paths of the
    train arguments mean what they meant on the command line; Tune would start it in its own trial folder.
    """
    from ray import tune

    if os.path.isdir(cwd):
        os.chdir(cwd)  # each trial is a process of its own: this changes no other trial
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    results = train(grid.argv(config, Path(out)))
    pruned, base = results["pruned"], results["base"]
    tune.report(
        {
            "test_top1": pruned["test"]["top1"],
            "val_top1": pruned["val"]["top1"],
            "macs_fraction": pruned["test"]["macs_fraction"],
            "params_fraction": pruned["test"]["params_fraction"],
            "base_test_top1": base["test"]["top1"],
            "seconds": time.perf_counter() - t0,
        }
    )


def _error_text(error: BaseException) -> str:
    """``Type: message`` on one line: the exception raised in the trial (Ray wraps it), else Ray's own error."""
    cause = getattr(error, "cause", None)  # a RayTaskError carries the trial's exception
    shown = cause if isinstance(cause, BaseException) else error
    message = " ".join(str(shown).split())
    return f"{type(shown).__name__}: {message}" if message else type(shown).__name__


def sweep(
    grid: SweepGrid,
    out_dir: str | Path,
    *,
    ray: str = "local",
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    trainable: Trainable = run_trial,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every trial of ``grid`` as a Ray Tune trial and write ``results.csv``, ``results.md`` and ``pareto.png``.

    Args:
        grid: The axes and shared train arguments (checked first: :meth:`SweepGrid.check`).
        out_dir: The sweep folder: one run directory per trial, the three outputs, Tune's ``tune/`` folder.
        ray: Ray address (:func:`agents.distributed.connect`): ``"local"`` (default), ``"auto"`` or ``HOST:PORT``.
        cpus_per_trial: CPUs each trial reserves; torch runs with as many threads (at least one).
        gpus_per_trial: GPUs each trial reserves (``--device auto`` in a trial picks its GPU when this is > 0).
        trainable: ``trainable(argv) -> results``, run in the worker for each trial (default :func:`run_trial`;
            another callable must be picklable by Ray and return ``results.json``'s content).
        progress: Show Tune's progress table.

    Returns:
        One row per trial in grid order (:meth:`SweepGrid.trials`), with the keys of :data:`CSV_FIELDS` and
        ``hp:KEY`` per hyperparameter axis; a failed trial has ``status`` ``"failed"``, its ``error`` and NaN
        metrics. No trial is left out.

    Raises:
        UsageError: the grid does not check out, or ``out_dir`` already holds a sweep.
        ImportError: Ray Tune is not installed (the message names the extra).
    """
    grid.check()
    out = Path(out_dir).resolve()
    if (out / "results.csv").is_file():
        raise UsageError(f"{out} already holds a sweep (results.csv); pick another --out")
    try:
        from ray import tune
    except ImportError as err:
        raise ImportError('Ray Tune is not installed; install the extra: pip install "prunegym[ray]"') from err
    out.mkdir(parents=True, exist_ok=True)

    def trial_name(trial: Any) -> str:
        return grid.trial_name(trial.config)

    function = tune.with_parameters(
        _tune_function, grid=grid, out=str(out), train=trainable, threads=max(1, int(cpus_per_trial)), cwd=os.getcwd()
    )
    tuner = tune.Tuner(
        tune.with_resources(function, {"cpu": cpus_per_trial, "gpu": gpus_per_trial}),
        param_space=grid.param_space(tune),
        tune_config=tune.TuneConfig(
            trial_name_creator=trial_name, trial_dirname_creator=trial_name, reuse_actors=False
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(out),
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=1 if progress else 0,
        ),
    )
    with connect(ray):
        results = tuner.fit()

    by_name = {grid.trial_name(result.config or {}): result for result in (results[i] for i in range(len(results)))}
    rows = [_row(config, by_name.get(grid.trial_name(config)), grid, out) for config in grid.trials()]
    _write_outputs(out, rows, list(grid.hyperparams))
    return rows


def _row(config: dict[str, Any], result: Any, grid: SweepGrid, out: Path) -> dict[str, Any]:
    """A trial's ``results.csv`` row from its config and Tune ``Result`` (``None``: Tune returned none for it)."""
    name = grid.trial_name(config)
    row: dict[str, Any] = {"trial": name, **{k: config[k] for k in ("seed", "budget", "algo")}}
    row.update({f"hp:{key}": value for key, value in config["hyperparams"].items()})
    metrics = (result.metrics or {}) if result is not None and result.error is None else {}
    if result is None:
        row.update(status="failed", error="Tune returned no result for this trial")
    elif result.error is not None:
        row.update(status="failed", error=_error_text(result.error))
    elif not all(m in metrics for m in METRICS):
        row.update(status="failed", error=f"the trial ended without reporting {', '.join(METRICS)}")
    else:
        row.update(status="ok", error="")
    row.update({m: float(metrics.get(m, math.nan)) for m in METRICS}, run_dir=str(out / name))
    return row


def _write_outputs(out: Path, rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> None:
    """``results.csv``, ``results.md`` and ``pareto.png`` (the finished trials) in ``out``."""
    fields = [*CSV_FIELDS[:6], *(f"hp:{k}" for k in keys), *CSV_FIELDS[6:]]
    with (out / "results.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: row.get(k) for k in fields} for row in rows)
    (out / "results.md").write_text(markdown_table(rows, keys), encoding="utf-8")
    finished = [
        {
            "policy": " ".join([row["algo"], *(f"{k}={row[f'hp:{k}']}" for k in keys)]),
            "budget": row["budget"],
            "mac_fraction": row["macs_fraction"],
            "params": row["params_fraction"],
            "test_top1": row["test_top1"],
        }
        for row in rows
        if row["status"] == "ok"
    ]
    if finished:
        pareto_plot(finished, out / "pareto.png", title=f"{out.name}: {len(finished)} of {len(rows)} trials finished")
    log.info("wrote %s, %s and %s", out / "results.csv", out / "results.md", out / "pareto.png")


def markdown_table(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> str:
    """The sweep's rows as a markdown table, one line per trial (a failed trial shows its error).

    :func:`agents.compare.markdown_table` does not fit: it aggregates seeds and has no status or error column.
    """

    def number(value: float, digits: int) -> str:
        return "–" if math.isnan(value) else f"{value:.{digits}f}"

    head = ["trial", "status", "algo", "budget", "seed", *keys, "test top-1 (%)", "MAC fraction", "params fraction"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    for row in rows:
        error = row["error"] if len(row["error"]) <= 100 else row["error"][:99] + "…"  # in full in results.csv
        status = row["status"] if row["status"] == "ok" else f"failed: {error}".replace("|", "\\|")
        cells = [row["trial"], status, row["algo"], f"{row['budget']:g}", str(row["seed"])]
        cells += [str(row[f"hp:{k}"]) for k in keys]
        cells += [number(row["test_top1"], 2), number(row["macs_fraction"], 4), number(row["params_fraction"], 4)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prunegym sweep",
        usage="prunegym sweep [options] [-- TRAIN_AGENT_ARGS ...]",
        description="Run train_agent.py over a grid (seeds × budgets × algorithms × hyperparameters) with Ray "
        "Tune, each trial a run directory under --out, collected into results.csv, results.md and pareto.png. "
        "Arguments after -- go to every run. Exits with 1 when any trial failed.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[_train_default("seed")], help="--seed of the runs")
    p.add_argument("--budgets", nargs="+", type=float, default=[_train_default("budget")], help="--budget of the runs")
    p.add_argument("--algos", nargs="+", default=[_train_default("algo")], metavar="ALGO", help="--algo of the runs")
    p.add_argument(
        "--hyperparams", nargs="+", default=[], metavar="KEY=V1,V2",
        help="one axis per key: the runs' --hyperparams KEY=V for each comma-separated value",
    )  # fmt: skip
    p.add_argument("--out", default=None, help="sweep folder (default: runs/sweep__<time>)")
    p.add_argument(
        "--ray", default="local", metavar="ADDRESS",
        help="local (a new Ray instance on this machine), auto (the cluster this machine joined) or HOST:PORT",
    )  # fmt: skip
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs each trial reserves (torch threads)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPUs each trial reserves")
    p.add_argument("--no-progress", action="store_true", help="no Tune progress table")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run train_agent.py over a grid with Ray Tune: table + Pareto plot (``prunegym sweep``).

    Returns:
        0 when every trial finished, 1 when any trial failed (its row says why), 2 on a usage error.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    cut = args_list.index("--") if "--" in args_list else len(args_list)
    args = _parser().parse_args(args_list[:cut])
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = args.out or f"runs/sweep__{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        grid = SweepGrid(
            train_args=tuple(args_list[cut + 1 :]), seeds=tuple(args.seeds), budgets=tuple(args.budgets),
            algos=tuple(args.algos), hyperparams=parse_hyperparam_axes(args.hyperparams),
        )  # fmt: skip
        rows = sweep(
            grid, out, ray=args.ray, cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
            progress=not args.no_progress,
        )  # fmt: skip
    except (UsageError, ImportError) as err:
        print(f"prunegym sweep: error: {err}", file=sys.stderr)
        return 2
    print((Path(out) / "results.md").read_text(encoding="utf-8"))
    failed = [row["trial"] for row in rows if row["status"] != "ok"]
    print(f"results in {out}" + (f"; {len(failed)} of {len(rows)} trial(s) failed" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
