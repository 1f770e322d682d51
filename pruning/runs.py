"""What every PruneGym command that writes a run directory shares: config records, resume, errors, exit codes.

A run command (``prunegym pretrain``, ``train_agent.py`` / ``prunegym train``) is an argument parser, a
``resolve(args) -> cfg`` step, a ``run(cfg, run_dir, resume=..., argv=...) -> results`` step and a report.
:func:`run_command` wires them the same way for all of them:

* ``--resume RUN_DIR`` reads ``RUN_DIR/config.json``, applies the options given again on top
  (:func:`resume_config`) and refuses to change the settings that define the run;
* a new run refuses a directory that already holds one;
* a :class:`UsageError` or a missing file is one line on stderr and exit code 2, and a directory the failed start
  created (with no checkpoint in it) is removed, so no broken run directory is left behind;
* Ctrl-C is exit code 130 with the ``--resume`` hint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CONFIG_FILE",
    "UsageError",
    "check_device",
    "command_record",
    "common_settings",
    "resume_config",
    "run_command",
    "write_json",
]

CONFIG_FILE = "config.json"


class UsageError(Exception):
    """A problem with the command line, the data or the run directory, reported as one line (exit code 2)."""


def common_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed options as a plain dict, with the conventions every run command shares applied.

    ``--resume`` is dropped (it is not a setting); ``--weights`` ``"none"`` (any case) becomes ``None`` and
    ``"default"`` becomes ``"DEFAULT"``; ``--device auto`` (or unset) becomes ``cuda`` when available, else
    ``cpu``; any other ``--device`` is checked by :func:`check_device`.

    Raises:
        UsageError: ``--device`` names a device this machine does not have.
    """
    cfg = dict(vars(args))
    cfg.pop("resume", None)
    weights = cfg.get("weights")
    if isinstance(weights, str) and weights.lower() == "none":
        weights = None
    if isinstance(weights, str) and weights.upper() == "DEFAULT":
        weights = "DEFAULT"
    cfg["weights"] = weights
    if cfg.get("device") in (None, "auto"):
        cfg["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    elif "device" in cfg:
        cfg["device"] = check_device(str(cfg["device"]))
    return cfg


def check_device(name: str) -> str:
    """``name`` if it is a torch device this machine has, else a :class:`UsageError` naming what it has.

    Args:
        name: A torch device string: ``cpu``, ``cuda``, ``cuda:N``, ``mps``, ...

    Raises:
        UsageError: not a device string, a backend that is not available, or a CUDA index past the last GPU.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise UsageError(f"--device {name!r} is not a torch device ({err}); use cpu, cuda, cuda:N or auto") from err
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
            raise UsageError(
                f"--device {name}: this machine has no usable CUDA GPU (torch {torch.__version__}, {built}); "
                "use --device cpu, or auto to pick cuda when there is one"
            )
        if device.index is not None and device.index >= count:
            raise UsageError(
                f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}; pick one of "
                "them, or pass --device cuda or auto"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available on this machine; use --device cpu or auto")
    return name


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (temp file + rename; numpy/torch scalars become floats)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def command_record(
    run_dir: Path, cfg: dict[str, Any], prog: Sequence[str], argv: Sequence[str] | None, *, resume: bool
) -> dict[str, Any]:
    """The ``config.json`` record of a run: settings, the command line, the resume command lines, versions.

    On resume the original command line is kept and this one is appended to ``resume_commands``.
    """
    command = " ".join(shlex.quote(a) for a in [*prog, *(argv or [])])
    record: dict[str, Any] = {"args": cfg, "command": command, "resume_commands": []}
    if resume and (run_dir / CONFIG_FILE).is_file():
        saved = json.loads((run_dir / CONFIG_FILE).read_text())
        record["command"] = saved.get("command", command)
        record["resume_commands"] = [*saved.get("resume_commands", []), command]
    record.update(python=platform.python_version(), torch=torch.__version__)
    return record


def resume_config(
    run_dir: Path,
    argv: Sequence[str],
    *,
    build_parser: Callable[..., argparse.ArgumentParser],
    resolve: Callable[[argparse.Namespace], dict[str, Any]],
    identity_keys: Sequence[str],
    what: str,
) -> dict[str, Any]:
    """The saved config of ``run_dir`` with the options given on this command line applied over it.

    Args:
        run_dir: The run directory to continue.
        argv: This command line.
        build_parser: The command's parser factory; called with ``defaults=False`` so only given options parse.
        resolve: The command's config resolver.
        identity_keys: Settings that define the run and may not change.
        what: The command's name for messages (``"pretrain"``, ``"train_agent"``).

    Raises:
        UsageError: no ``config.json`` in ``run_dir``, or an identity setting would change.
    """
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise UsageError(f"cannot resume: no {CONFIG_FILE} in {run_dir}; pass the run directory of a {what} run")
    saved = json.loads(path.read_text())["args"]
    given = vars(build_parser(defaults=False).parse_args(list(argv)))
    given.pop("resume", None)
    merged = resolve(argparse.Namespace(**{**saved, **given, "out": str(run_dir)}))
    changed = [k for k in identity_keys if merged.get(k) != saved.get(k)]
    if changed:
        raise UsageError(
            f"cannot resume {run_dir} with different {', '.join('--' + k.replace('_', '-') for k in changed)}; "
            "start a new run instead"
        )
    return merged


def run_command(
    argv: Sequence[str] | None,
    *,
    prog: str,
    build_parser: Callable[..., argparse.ArgumentParser],
    resolve: Callable[[argparse.Namespace], dict[str, Any]],
    run: Callable[..., dict[str, Any]],
    report: Callable[[dict[str, Any], Path], None],
    identity_keys: Sequence[str],
    checkpoint_file: str = "checkpoint.pt",
) -> int:
    """Parse ``argv`` and run a run-directory command (see the module docstring); return the exit code.

    Args:
        argv: Arguments without the program name (``None``: ``sys.argv[1:]``).
        prog: Name used in messages (``"prunegym pretrain"``, ``"train_agent.py"``).
        build_parser: ``build_parser(defaults=True)``; the parser must define ``--resume``, ``--quiet`` and
            ``--out`` (the resolved config's ``"out"`` is the run directory).
        resolve: ``resolve(args) -> cfg`` (raises :class:`UsageError`).
        run: ``run(cfg, run_dir, resume=bool, argv=list) -> results``.
        report: Prints the results at the end.
        identity_keys: Settings ``--resume`` may not change.
        checkpoint_file: A file whose presence means the directory holds resumable work (never deleted).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    run_dir: Path | None = None
    created = False
    try:
        if args.resume is not None:
            run_dir = Path(args.resume)
            cfg = resume_config(
                run_dir, argv, build_parser=build_parser, resolve=resolve, identity_keys=identity_keys,
                what=prog.split()[-1],
            )  # fmt: skip
        else:
            cfg = resolve(args)
            run_dir = Path(cfg["out"])
            if (run_dir / CONFIG_FILE).is_file():
                raise UsageError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick --out")
            created = not run_dir.exists()
        results = run(cfg, run_dir, resume=args.resume is not None, argv=argv)
    except (UsageError, FileNotFoundError) as err:
        if created and run_dir is not None and not (run_dir / checkpoint_file).is_file():
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing worth keeping: no broken run directory
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = f"; continue with --resume {run_dir}" if run_dir is not None else ""
        print(f"{prog}: interrupted{hint}", file=sys.stderr)
        return 130
    report(results, run_dir)
    return 0
