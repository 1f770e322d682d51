"""The ``prunegym`` command: one entry point, sub-commands looked up in a registry.

``prunegym <command> [options]`` runs ``<command>``'s ``main(argv)`` with the remaining arguments and exits
with its return code; ``prunegym`` alone (or ``-h``) lists the commands.

Adding a command — three ways, all ending in the same registry:

* in this package: add an entry to :data:`BUILTIN_COMMANDS` (``name: ("module:function", help)``); the module
  is imported only when the command runs, so ``prunegym --help`` stays fast;
* from code that imports PruneGym: ``register_command("compare", "agents.compare:main", "compare policies")``
  (a callable works too);
* from another installed package, without touching this one: declare an entry point in its
  ``pyproject.toml``::

      [project.entry-points."prunegym.commands"]
      train-agent = "agents.cli:main"

  The entry point's name is the command; its target is ``main(argv: list[str]) -> int``. The help line is
  the first line of the target's docstring.

``pruning`` never imports ``envs`` or ``agents``: higher layers add their commands through the last two
routes.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

from .registry import Registry

__all__ = [
    "BUILTIN_COMMANDS",
    "ENTRY_POINT_GROUP",
    "Command",
    "get_command",
    "list_commands",
    "main",
    "register_command",
]

log = logging.getLogger(__name__)

#: ``main(argv) -> exit code``.
CommandFn = Callable[[list[str]], int | None]

#: Entry-point group scanned for commands of other installed packages.
ENTRY_POINT_GROUP = "prunegym.commands"

#: Commands of this package: name → (``"module:function"``, one-line help).
BUILTIN_COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("pruning.pretrain:main", "train or fine-tune a CIFAR model, gate it and run the gate stage"),
    "compare": ("agents.compare:main", "compare pruning policies: table + Pareto plot"),
    "train": ("agents.cli:main", "train runtime/static pruning agents with Chen et al.'s schedule (= train_agent.py)"),
    "export": ("agents.export_cli:main", "export a finished run's pruned model to TorchScript or ONNX"),
    "sweep": (
        "agents.sweep:main",
        "train_agent.py over a grid of seeds, budgets, algorithms, hyperparameters (Ray Tune)",
    ),
    "protocol": (
        "agents.protocol:main",
        "the fair protocol: learned vs hand-designed pruning at equal MACs and equal training",
    ),
}


@dataclass(frozen=True)
class Command:
    """A registered sub-command.

    Attributes:
        name: What the user types after ``prunegym``.
        target: ``main(argv) -> int`` or its import path ``"package.module:function"`` (imported on use).
        help: One line for the command list.
    """

    name: str
    target: CommandFn | str
    help: str = ""

    def load(self) -> CommandFn:
        """Return the callable, importing it if the target is a path.

        Raises:
            ImportError: The module cannot be imported or lacks the attribute.
        """
        if callable(self.target):
            return self.target
        module_name, _, attr = self.target.partition(":")
        module = importlib.import_module(module_name)
        fn = getattr(module, attr or "main", None)
        if not callable(fn):
            raise ImportError(f"command {self.name!r}: {self.target!r} is not a callable")
        return fn  # type: ignore[no-any-return]


_COMMANDS: Registry[Command] = Registry("command")
_entry_points_loaded = False


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter, except for options whose help already states its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        if "(default:" in help_text:
            return help_text
        return super()._get_help_string(action)


def register_command(name: str, target: CommandFn | str, help: str = "", *, replace: bool = False) -> Command:
    """Add a sub-command to ``prunegym``.

    Args:
        name: The command name (lowercase, no spaces), e.g. ``"compare"``.
        target: ``main(argv: list[str]) -> int`` or its import path ``"package.module:function"``.
        help: One line shown by ``prunegym --help``.
        replace: Allow overriding an existing command of the same name.

    Returns:
        The registered :class:`Command`.

    Raises:
        ValueError: The name is invalid, or taken and ``replace`` is false.
    """
    if not name or name.startswith("-") or any(c.isspace() for c in name):
        raise ValueError(f"invalid command name {name!r}: use a word such as 'pretrain' or 'train-agent'")
    if name in _COMMANDS and not replace:
        raise ValueError(f"a command named {name!r} is already registered; pass replace=True to override it")
    return _COMMANDS.add(name, Command(name, target, help), replace=replace)


for _name, (_target, _help) in BUILTIN_COMMANDS.items():
    register_command(_name, _target, _help)


def _load_entry_points() -> None:
    """Register the commands other installed packages declare in the ``prunegym.commands`` group (once)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _COMMANDS:
            log.debug("entry point %s ignored: command already registered", ep.name)
            continue
        register_command(ep.name, ep.value, "")


def list_commands() -> list[str]:
    """Names of all commands (built in, registered and installed), sorted."""
    _load_entry_points()
    return _COMMANDS.names()


def get_command(name: str) -> Command:
    """The command called ``name``.

    Raises:
        ValueError: No such command; the message suggests close names.
    """
    _load_entry_points()
    return _COMMANDS.get(name)


def _help_line(cmd: Command) -> str:
    if cmd.help:
        return cmd.help
    try:
        doc = cmd.load().__doc__ or ""
    except ImportError:
        return "(cannot be imported)"
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _usage() -> str:
    names = list_commands()
    width = max((len(n) for n in names), default=0) + 2
    lines = [
        "usage: prunegym <command> [options]",
        "",
        "Gymnasium environments for reinforcement-learning channel pruning of CIFAR CNNs.",
        "",
        "commands:",
    ]
    lines += [f"  {n:<{width}}{_help_line(_COMMANDS.get(n))}" for n in names]
    lines += ["", "Run 'prunegym <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``prunegym`` console script.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The command's exit code (``None`` counts as 0); 0 for ``--help``, 2 for a missing or unknown command.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] == "--version":
        print(f"prunegym {_version()}")
        return 0
    try:
        cmd = get_command(args[0])
    except ValueError as err:
        print(f"prunegym: error: {err}", file=sys.stderr)
        return 2
    code = cmd.load()(args[1:])
    return 0 if code is None else int(code)


def _version() -> str:
    try:
        return metadata.version("prunegym")
    except metadata.PackageNotFoundError:
        return "(not installed)"


if __name__ == "__main__":
    raise SystemExit(main())
