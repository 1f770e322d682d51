"""What PruneGym's environments render: a picture or a text table of the pruning plan of the episode so far.

Both environments describe their episode as an :class:`EpisodeFrame` (one :class:`UnitFrame` per prunable unit:
full width, stored channels, channels computed for the image, static and runtime keep ratios; the MAC and
parameter fractions against their budgets) and hand it to :func:`render_frame`:

* ``"rgb_array"``: a ``uint8`` array of shape :data:`RGB_SHAPE` (360 × 640 × 3). Left, one stacked bar per
  unit over its full width: channels computed (dark), stored but pruned at runtime (light), removed from the
  stored model (grey); a black bar marks the static keep ratio and a red triangle the runtime keep ratio;
  undecided units are drawn as outlines of their stored width. Right, the MAC fraction (and the parameter
  fraction) as bars with the budgets as vertical lines. Drawn with matplotlib's Agg canvas: no display, no
  ``pyplot`` state.
* ``"ansi"``: the same as a text table (one row per unit, ``-`` for what is not decided yet), one string.

The render mode is chosen at construction (``render_mode=``, Gymnasium's convention); ``None`` renders nothing.

    >>> from envs.render import EpisodeFrame, UnitFrame, render_frame
    >>> frame = EpisodeFrame(
    ...     title="example", units=(UnitFrame(16, stored=8, computed=6, static_keep=0.5, runtime_keep=0.375),
    ...                             UnitFrame(32)), macs_fraction=0.6, budget=0.5)
    >>> render_frame(frame, "rgb_array").shape
    (360, 640, 3)
    >>> print(render_frame(frame, "ansi"))
    example: 1 of 2 units decided
    unit  channels  static keep  runtime keep  stored  computed  runtime-pruned
       0        16        0.500         0.375       8         6               2
       1        32            -             -       -         -               -
    MAC fraction 0.6000 (budget 0.5000)
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "RENDER_FPS",
    "RENDER_MODES",
    "RGB_SHAPE",
    "EpisodeFrame",
    "UnitFrame",
    "check_render_mode",
    "frame_to_rgb",
    "frame_to_text",
    "render_frame",
]

#: Height, width and channels of every ``rgb_array`` frame.
RGB_SHAPE: tuple[int, int, int] = (360, 640, 3)
#: Frames per second declared in the environments' ``metadata`` (one step per frame; a video of a ResNet-56
#: episode of 27 units lasts about 7 s).
RENDER_FPS = 4
_DPI = 100


@dataclass(frozen=True)
class UnitFrame:
    """One prunable unit as rendered.

    Attributes:
        channels: Full output width C of the unit.
        stored: Channels kept in the stored model (``None``: not decided yet).
        computed: Channels computed for the image (the static environment: the most any image computes;
            ``None``: not run or not decided yet).
        static_keep: Applied static keep ratio (``None``: not decided yet).
        runtime_keep: Applied runtime keep ratio (``None``: none, or not run yet).
    """

    channels: int
    stored: int | None = None
    computed: int | None = None
    static_keep: float | None = None
    runtime_keep: float | None = None

    @property
    def decided(self) -> bool:
        """Whether the episode has acted on this unit (its computed channels are known)."""
        return self.computed is not None


@dataclass(frozen=True)
class EpisodeFrame:
    """The pruning plan of an episode so far, what :func:`render_frame` draws.

    Attributes:
        title: First line (the environment and what the episode is about).
        units: One entry per prunable unit, in order.
        macs_fraction: Backbone MAC fraction of the plan so far (``None``: unknown).
        budget: The MAC budget (``None``: none).
        params_fraction: Stored backbone parameter fraction (``None``: not shown).
        param_budget: The parameter budget (``None``: none).
        macs_label: What ``macs_fraction`` measures, shown beside it (e.g. "committed so far").
    """

    title: str
    units: tuple[UnitFrame, ...]
    macs_fraction: float | None = None
    budget: float | None = None
    params_fraction: float | None = None
    param_budget: float | None = None
    macs_label: str = ""

    @property
    def num_decided(self) -> int:
        """How many units the episode has acted on."""
        return sum(u.decided for u in self.units)


def _fmt(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _budget_line(frame: EpisodeFrame) -> str:
    parts = []
    if frame.macs_fraction is not None:
        label = f"; {frame.macs_label}" if frame.macs_label else ""
        parts.append(f"MAC fraction {frame.macs_fraction:.4f} (budget {_fmt(frame.budget, '.4f')}{label})")
    if frame.params_fraction is not None:
        parts.append(f"params fraction {frame.params_fraction:.4f} (budget {_fmt(frame.param_budget, '.4f')})")
    return "    ".join(parts)


def frame_to_text(frame: EpisodeFrame) -> str:
    """The frame as a text table: a title line, one row per unit, the budget line (``"ansi"`` mode)."""
    header = ("unit", "channels", "static keep", "runtime keep", "stored", "computed", "runtime-pruned")
    lines = [
        f"{frame.title}: {frame.num_decided} of {len(frame.units)} units decided",
        "  ".join(header),
    ]
    for i, u in enumerate(frame.units):
        pruned = None if u.computed is None or u.stored is None else u.stored - u.computed
        cells = (
            str(i), str(u.channels), _fmt(u.static_keep, ".3f"), _fmt(u.runtime_keep, ".3f"), _fmt(u.stored, "d"),
            _fmt(u.computed, "d"), _fmt(pruned, "d"),
        )  # fmt: skip
        lines.append("  ".join(c.rjust(len(h)) for c, h in zip(cells, header, strict=True)))
    budget = _budget_line(frame)
    if budget:
        lines.append(budget)
    return "\n".join(lines)


def frame_to_rgb(frame: EpisodeFrame) -> np.ndarray:
    """The frame as a picture: ``uint8`` of shape :data:`RGB_SHAPE` (``"rgb_array"`` mode; see the module docstring)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height, width, _ = RGB_SHAPE
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    canvas = FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    xs = np.arange(len(frame.units))
    full = np.array([u.channels for u in frame.units], dtype=np.float64)
    done = np.array([u.decided for u in frame.units])
    stored = np.array([u.stored if u.stored is not None else u.channels for u in frame.units]) / full
    computed = np.array([u.computed if u.computed is not None else 0 for u in frame.units]) / full
    w = 0.7
    if done.any():  # (an empty bar call would still add a legend entry)
        left.bar(xs[done], computed[done], width=w, color="tab:blue", label="computed")
        left.bar(xs[done], (stored - computed)[done], bottom=computed[done], width=w, color="tab:blue", alpha=0.3,
                 label="runtime-pruned")  # fmt: skip
    left.bar(xs, 1.0 - stored, bottom=stored, width=w, color="0.85", label="removed (stored model)")
    if not done.all():
        left.bar(xs[~done], stored[~done], width=w, fill=False, edgecolor="0.5", linestyle="--", label="undecided")
    statics = [(x, u.static_keep) for x, u in zip(xs, frame.units, strict=True) if u.decided and u.static_keep]
    if statics:
        sx, sy = zip(*statics, strict=True)
        left.scatter(sx, sy, marker="_", s=300, color="black", linewidths=2, label="static keep", zorder=3)
    runtimes = [(x, u.runtime_keep) for x, u in zip(xs, frame.units, strict=True) if u.runtime_keep is not None]
    if runtimes:
        rx, ry = zip(*runtimes, strict=True)
        left.scatter(rx, ry, marker="v", s=30, color="tab:red", label="runtime keep", zorder=4)
    left.set_xlim(-0.6, max(len(xs), 1) - 0.4)
    left.set_ylim(0.0, 1.3)
    left.set_xlabel("unit")
    left.set_ylabel("fraction of the unit's channels")
    left.set_title(f"{frame.title}: {frame.num_decided}/{len(frame.units)} units decided", fontsize=9)
    left.legend(fontsize=6, loc="upper center", ncol=3, frameon=False)
    if len(xs) <= 20:
        left.set_xticks(xs)
    left.tick_params(labelsize=7)

    bars = [("MACs", frame.macs_fraction, frame.budget), ("params", frame.params_fraction, frame.param_budget)]
    bars = [b for b in bars if b[1] is not None]
    for y, (name, value, budget) in enumerate(bars):
        over = budget is not None and value is not None and value > budget + 1e-9
        right.barh(y, value, height=0.5, color="tab:red" if over else "tab:green")
        right.text(0.02, y + 0.33, f"{name} {value:.3f}", fontsize=7)
        if budget is not None:
            right.plot([budget, budget], [y - 0.35, y + 0.35], color="black", linewidth=1.5)
    right.set_xlim(0.0, 1.0)
    right.set_ylim(-0.6, max(len(bars), 1) - 0.2)
    right.set_yticks([])
    right.set_xlabel("fraction of base (| budget)", fontsize=7)
    right.set_title(textwrap.fill(f"cost: {frame.macs_label}" if frame.macs_label else "cost", 28), fontsize=7)
    right.tick_params(labelsize=7)
    fig.tight_layout()
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba())[..., :3]
    if image.shape != RGB_SHAPE:  # a backend rounding the canvas size differently: pad or crop to the contract
        out = np.full(RGB_SHAPE, 255, dtype=np.uint8)
        h, w_ = min(height, image.shape[0]), min(width, image.shape[1])
        out[:h, :w_] = image[:h, :w_]
        return out
    return np.ascontiguousarray(image, dtype=np.uint8)


#: What each render mode returns for a frame.
_RENDERERS: dict[str, Callable[[EpisodeFrame], Any]] = {"rgb_array": frame_to_rgb, "ansi": frame_to_text}

#: The render modes of every PruneGym environment (``metadata["render_modes"]``).
RENDER_MODES: tuple[str, ...] = tuple(_RENDERERS)


def check_render_mode(render_mode: str | None, owner: str) -> str | None:
    """Validate a constructor's ``render_mode``: ``None`` or one of :data:`RENDER_MODES`.

    Args:
        render_mode: The requested mode.
        owner: The class name, for the message.

    Raises:
        ValueError: another mode (``"human"`` needs a display, which PruneGym does not open).
    """
    if render_mode is not None and render_mode not in _RENDERERS:
        raise ValueError(
            f"{owner} cannot render in mode {render_mode!r}; render_mode must be None or one of "
            f"{', '.join(map(repr, RENDER_MODES))} (show 'rgb_array' frames yourself, e.g. with matplotlib)"
        )
    return render_mode


def render_frame(frame: EpisodeFrame, render_mode: str | None) -> np.ndarray | str | None:
    """Render ``frame`` in ``render_mode``: an RGB array, a string, or ``None`` for no mode.

    Raises:
        ValueError: an unknown mode.
    """
    if check_render_mode(render_mode, "render_frame") is None:
        return None
    assert render_mode is not None
    return _RENDERERS[render_mode](frame)
