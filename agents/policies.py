"""Actor-critic policies whose Gaussian action mean is a residual on the budget.

Chen, Chen & Pan, "Storage Efficient and Dynamic Flexible Runtime Channel Pruning via Deep Reinforcement
Learning" (NeurIPS 2020, Sec. 3.3, and its released code): both agents output ``μ = Linear(128, 1)(h) + budget``
with the head's weights scaled by 0.2 and its bias 0, and ``log σ`` starts at −4 (σ ≈ 0.018). A fresh agent
therefore proposes the keep ratio that meets the budget under uniform pruning, and learning only has to find
the per-layer (and, at runtime, per-image) deviations from it. This module gives stable-baselines3 the same
prior:

- :class:`BudgetResidualPolicy`, an ``ActorCriticPolicy`` for PPO and A2C;
- :class:`BudgetResidualLstmPolicy`, sb3-contrib's ``RecurrentActorCriticPolicy`` for RecurrentPPO.

**The prior.** PruneGym's actions are ``Box(-1, 1)`` and map affinely to a keep ratio
``r = min_keep + (a + 1)/2 · (1 - min_keep)``; the observation carries the MAC budget ``B`` (a fraction of the base
backbone MACs) at ``env.unwrapped.budget_index``. The MAC fraction of a *uniform* keep ratio ``r`` is exactly a
quadratic ``c0 + c1·r + c2·r²`` (a unit's MACs are linear in its own kept outputs and in its producer's kept
outputs): ``c2`` collects convs whose inputs and outputs are both pruned (plain nets: M-CifarNet, VGG), ``c1``
convs with one side pruned (ResNet basic blocks: a unit's own conv and its consumer), ``c0`` the rest. The
prior keep ratio is the root ``r0(B)`` of ``c0 + c1·r + c2·r² = B``, clipped to ``[min_keep, 1]``, and the prior
action is its preimage::

    a0 = 2·(clip(r0(B), min_keep, 1) - min_keep) / (1 - min_keep) - 1

The default curve ``(c0, c1, c2) = (0, 0, 1)`` gives ``r0 = sqrt(B)``, Chen et al.'s own relation between its
uniform ratio ``b`` and its MAC cap (``cap ≈ b²`` on M-CifarNet). It is wrong for ResNets, whose MACs are
nearly linear in the keep ratio (ResNet-20: ``(0.011, 0.989, 0)``; ``sqrt(0.5)`` keeps 71% of the MACs), so
:func:`complete_policy_kwargs` (called by :func:`agents.algos.make_model`) fits the curve of the env's own model
with :func:`uniform_macs_curve`. The prior goes on action dimension 0 (the keep ratio); other dimensions (the
static env's R_r with ``learn_split``) get 0, i.e. R_r = 0.5. The curve is continuous; the envs round keep counts
up, so the prior lands on the budget or just above it (ResNet-20 at B = 0.5: 0.506) and the head and the
exploration noise do the rest.

**How the prior reaches the distribution.** stable-baselines3 builds the Gaussian in
``_get_action_dist_from_latent(latent_pi)``, which sees only the latent, not the observation. Every path that
builds a distribution — ``forward`` (rollouts), ``evaluate_actions`` (the PPO / A2C loss), ``get_distribution``
(which ``_predict`` and so ``predict`` use), and their recurrent versions with LSTM states and episode starts —
is overridden to compute the prior of its observation batch and hold it for exactly the duration of the parent
method (a context manager); the overridden ``_get_action_dist_from_latent`` adds it to ``action_net(latent_pi)``.
The parent methods run unchanged (no copy of their code), so LSTM sequencing, shared or separate extractors and
value heads behave as in SB3. Calling ``_get_action_dist_from_latent`` outside those methods raises
``RuntimeError`` instead of silently dropping the prior. ``predict_values`` needs no prior.

**Initialisation.** ``action_net`` is re-initialised after SB3 builds it (SB3's orthogonal init would make it
0.01-gain): PyTorch's default ``Linear`` init, weights ×``mean_init_scale`` (0.2), bias 0, as in the released code.

**Differences from the paper.**

- ``log σ`` is SB3's state-independent parameter (one per action dimension), initialised to ``log_std_init``
  (−4); the paper's ``log σ`` is a state-dependent head ``Linear(128, 1)`` whose *bias* starts at −4. Only the
  initial value matches.
- The paper's runtime agent is a per-layer ``Linear(C_in + C_out, 128)`` + ReLU encoder followed by a tanh
  ``nn.RNN``; here it is SB3's LSTM (or MLP) over the flattened observation.
- The out-of-range regulariser L_a (Eq. 13) is not implemented: the envs clip actions to ``[-1, 1]``, and SB3
  clips before stepping, so an out-of-range mean costs nothing but wasted probability mass.
- The paper's budget is the uniform keep ratio itself; here it is the MAC fraction and the curve inverts it.

Example:
    >>> import gymnasium as gym
    >>> from stable_baselines3 import PPO
    >>> import envs
    >>> env = gym.make("prunegym/StaticPruning-v0", model="tiny_cnn", budget=0.5, num_val=16, batch_size=16)
    >>> kwargs = complete_policy_kwargs("BudgetResidualPolicy", {"net_arch": [16]}, env)
    >>> sorted(kwargs)
    ['budget_index', 'macs_curve', 'min_keep', 'net_arch']
    >>> model = PPO(get_policy("BudgetResidualPolicy"), env, policy_kwargs=kwargs, n_steps=16, batch_size=16, seed=0)
    >>> round(float(model.policy.log_std.detach().exp()[0]), 4)  # sigma = exp(-4)
    0.0183
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Generator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.distributions import DiagGaussianDistribution, Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule

from agents.unwrap import pruning_target
from envs import RUNTIME_ENV_ID, STATIC_ENV_ID
from pruning.accounting import CostModel, MacCoefficients
from pruning.registry import Registry

__all__ = [
    "DEFAULT_MACS_CURVE",
    "POLICIES",
    "BudgetResidualLstmPolicy",
    "BudgetResidualPolicy",
    "budget_prior_action",
    "complete_policy_kwargs",
    "fit_macs_curve",
    "get_policy",
    "is_budget_residual",
    "list_policies",
    "uniform_macs_curve",
]

#: ``(c0, c1, c2)`` of ``MAC fraction = c0 + c1·r + c2·r²`` when the env's curve is unknown: ``r0(B) = sqrt(B)``.
DEFAULT_MACS_CURVE: tuple[float, float, float] = (0.0, 0.0, 1.0)

#: Coefficients closer to 0 than this (float noise of :func:`uniform_macs_curve`) are taken as 0.
_CURVE_TOL = 1e-9


def _check_curve(macs_curve: Sequence[float]) -> tuple[float, float, float]:
    """``macs_curve`` as three floats; ``ValueError`` unless it is an increasing MAC curve."""
    try:
        c0, c1, c2 = (float(c) for c in macs_curve)
    except (TypeError, ValueError):
        raise ValueError(
            f"macs_curve must be three numbers (c0, c1, c2) of 'MAC fraction = c0 + c1*r + c2*r^2', got {macs_curve!r}"
        ) from None
    if not all(math.isfinite(c) for c in (c0, c1, c2)) or c1 < 0 or c2 < 0 or c1 + c2 <= 0:
        raise ValueError(
            f"macs_curve={macs_curve!r} is not a MAC curve: it needs finite c0, c1 >= 0, c2 >= 0 and c1 + c2 > 0 "
            f"(the MAC fraction must grow with the keep ratio); fit it with agents.policies.uniform_macs_curve"
        )
    return c0, c1, c2


def budget_prior_action(
    budget: torch.Tensor, min_keep: float, macs_curve: Sequence[float] = DEFAULT_MACS_CURVE
) -> torch.Tensor:
    """The action whose keep ratio, applied to every unit, meets the MAC budget: ``a0(B)``.

    Solves ``c0 + c1·r + c2·r² = B`` for ``r >= 0`` in the cancellation-free form
    ``r = 2(B - c0) / (c1 + sqrt(c1² + 4·c2·(B - c0)))`` (exact for ``c2 = 0`` and for ``c1 = 0``), clips ``r`` to
    ``[min_keep, 1]`` and maps it to ``a = 2(r - min_keep)/(1 - min_keep) - 1`` (``1`` when ``min_keep = 1``).

    Args:
        budget: MAC budgets (fractions of the base MACs), any shape.
        min_keep: The env's smallest keep ratio, in ``(0, 1]``.
        macs_curve: ``(c0, c1, c2)``; default ``(0, 0, 1)``, i.e. ``r = sqrt(B)``.

    Returns:
        ``a0`` in ``[-1, 1]``, same shape and dtype as ``budget``.

    Raises:
        ValueError: ``min_keep`` outside ``(0, 1]`` or a ``macs_curve`` that does not increase.
    """
    if not (math.isfinite(min_keep) and 0.0 < min_keep <= 1.0):
        raise ValueError(f"min_keep must be in (0, 1], got {min_keep}")
    c0, c1, c2 = _check_curve(macs_curve)
    above = (budget - c0).clamp_min(0.0)
    denominator = (c1 + torch.sqrt(c1 * c1 + 4.0 * c2 * above)).clamp_min(1e-12)
    ratio = (2.0 * above / denominator).clamp(min_keep, 1.0)
    if min_keep == 1.0:
        return torch.ones_like(ratio)
    return 2.0 * (ratio - min_keep) / (1.0 - min_keep) - 1.0


def uniform_macs_curve(costs: CostModel | MacCoefficients) -> tuple[float, float, float]:
    """``(c0, c1, c2)`` with ``c0 + c1·r + c2·r²`` the backbone MAC fraction when every unit keeps ``r·C``.

    The MACs (:class:`pruning.accounting.MacCoefficients`) are a polynomial of degree 2 in the kept counts (each
    unit's MACs are its kernel coefficient × kept inputs × kept outputs, plus linear consumer terms, no clamping),
    so three evaluations, at counts ``0``, ``C`` and ``2C``, give the coefficients exactly; ceil rounding of real
    keep counts is not modelled. Coefficients within 1e-9 of 0 are set to 0.

    Args:
        costs: The env's MAC coefficients (``pruning_target(env).macs``, :func:`agents.unwrap.pruning_target`)
            or a cost model (``env.unwrapped.cost_model``).

    Returns:
        The three coefficients; they sum to 1 (the unpruned model).
    """
    macs = costs.mac_coefficients() if isinstance(costs, CostModel) else costs
    full = np.asarray(macs.channels, dtype=np.int64)
    f0, f1, f2 = (float(macs.macs(k * full)[0]) / macs.base_macs for k in (0, 1, 2))
    c2 = (f2 - 2.0 * f1 + f0) / 2.0
    c1 = f1 - f0 - c2
    return tuple(0.0 if abs(c) < _CURVE_TOL else c for c in (f0, c1, c2))  # type: ignore[return-value]


def fit_macs_curve(ratios: Sequence[float], fractions: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares ``(c0, c1, c2)`` of ``MAC fraction = c0 + c1·r + c2·r²`` with ``c1, c2 >= 0``.

    For a measured curve (mean MAC fraction of a uniform runtime ratio ``r`` under a static plan and R_r, where
    :func:`uniform_macs_curve`'s exact full-width curve no longer holds). The unconstrained quadratic is used
    when both coefficients come out non-negative; otherwise the better of the linear (``c2 = 0``) and the pure
    quadratic (``c1 = 0``) fits.

    Args:
        ratios: Uniform keep ratios, at least two distinct values.
        fractions: The mean MAC fraction measured at each.

    Raises:
        ValueError: fewer than two distinct ratios, lengths differ, or the fractions do not grow with ``r``.
    """
    r = np.asarray(ratios, dtype=np.float64)
    f = np.asarray(fractions, dtype=np.float64)
    if r.shape != f.shape or len(np.unique(r)) < 2 or not np.isfinite(f).all():
        raise ValueError("fit_macs_curve needs finite fractions at two or more distinct ratios (same lengths)")
    candidates: list[np.ndarray] = []
    for cols in ((0, 1, 2), (0, 1), (0, 2)):
        design = np.stack([r**k for k in cols], axis=1)
        coef, *_ = np.linalg.lstsq(design, f, rcond=None)
        full = np.zeros(3)
        full[list(cols)] = coef
        if full[1] >= 0 and full[2] >= 0 and full[1] + full[2] > 0:
            candidates.append(full)
    if not candidates:
        raise ValueError(f"the measured MAC fractions {f.tolist()} do not grow with the ratio {r.tolist()}")
    best = min(candidates, key=lambda c: float(((c[0] + c[1] * r + c[2] * r * r - f) ** 2).sum()))
    return tuple(0.0 if abs(c) < _CURVE_TOL else float(c) for c in best)  # type: ignore[return-value]


class _BudgetResidual(ActorCriticPolicy):
    """What both budget-residual policies share: arguments, the prior, the distribution, saving.

    Not registered and not meant to be used directly: the concrete classes put it before
    ``ActorCriticPolicy`` or ``RecurrentActorCriticPolicy`` in their bases and override the methods that build a
    distribution so that each runs inside :meth:`_observing`.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        *,
        budget_index: int | None = None,
        min_keep: float | None = None,
        mean_init_scale: float = 0.2,
        macs_curve: Sequence[float] = DEFAULT_MACS_CURVE,
        log_std_init: float = -4.0,
        **kwargs: Any,
    ) -> None:
        name = type(self).__name__
        if budget_index is None or min_keep is None:
            missing = " and ".join(n for n, v in (("budget_index", budget_index), ("min_keep", min_keep)) if v is None)
            raise ValueError(
                f"{name} needs {missing}: where the MAC budget is in the observation and the env's smallest keep "
                f"ratio. Build the model with agents.algos.make_model, which fills them from the env, or pass "
                f"policy_kwargs=agents.policies.complete_policy_kwargs({name!r}, policy_kwargs, env)"
            )
        if not isinstance(action_space, spaces.Box) or len(action_space.shape) != 1:
            raise ValueError(f"{name} needs a 1-D Box action space (a keep ratio first), got {action_space}")
        if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 1:
            raise ValueError(f"{name} needs a 1-D Box observation space, got {observation_space}")
        if isinstance(budget_index, bool) or not isinstance(budget_index, int):
            raise ValueError(f"budget_index must be an int, got {budget_index!r}")
        if not 0 <= budget_index < observation_space.shape[0]:
            raise ValueError(
                f"budget_index={budget_index} is outside the observation (size {observation_space.shape[0]}); "
                f"use the env's own env.unwrapped.budget_index"
            )
        if not (math.isfinite(mean_init_scale) and mean_init_scale >= 0):
            raise ValueError(f"mean_init_scale must be a finite number >= 0, got {mean_init_scale}")
        if kwargs.get("use_sde"):
            raise ValueError(
                f"{name} does not support gSDE (use_sde=True): its prior is an additive shift of a Gaussian mean; "
                f"set use_sde=False"
            )
        budget_prior_action(torch.zeros(1), float(min_keep), macs_curve)  # validates min_keep and the curve
        super().__init__(observation_space, action_space, lr_schedule, log_std_init=log_std_init, **kwargs)
        self.budget_index = int(budget_index)
        self.min_keep = float(min_keep)
        self.mean_init_scale = float(mean_init_scale)
        self.macs_curve = tuple(float(c) for c in macs_curve)
        self._prior: torch.Tensor | None = None
        # the released code: default Linear init, weights x0.2, bias 0 (SB3's orthogonal 0.01-gain init replaced)
        assert isinstance(self.action_dist, DiagGaussianDistribution) and isinstance(self.action_net, torch.nn.Linear)
        with torch.no_grad():
            self.action_net.reset_parameters()
            self.action_net.weight.mul_(self.mean_init_scale)
            self.action_net.bias.zero_()

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            budget_index=self.budget_index,
            min_keep=self.min_keep,
            mean_init_scale=self.mean_init_scale,
            macs_curve=self.macs_curve,
        )
        return data

    def budget_prior(self, obs: PyTorchObs) -> torch.Tensor:
        """The prior mean of a batch of observations: ``a0(B)`` on action dim 0, 0 on the others.

        Args:
            obs: Observations ``(N, obs_dim)``, as the policy's methods receive them.

        Returns:
            Float tensor ``(N, action_dim)`` on the observations' device.
        """
        if not isinstance(obs, torch.Tensor):
            raise TypeError(f"{type(self).__name__} needs tensor observations, got {type(obs).__name__}")
        flat = obs.reshape(obs.shape[0], -1).float()
        prior = torch.zeros(flat.shape[0], int(self.action_space.shape[0]), device=flat.device)  # type: ignore[index]
        prior[:, 0] = budget_prior_action(flat[:, self.budget_index], self.min_keep, self.macs_curve)
        return prior

    @contextmanager
    def _observing(self, obs: PyTorchObs) -> Generator[None, None, None]:
        """Hold the prior of ``obs`` while a parent method builds its distribution (restored after, even nested)."""
        previous, self._prior = self._prior, self.budget_prior(obs)
        try:
            yield
        finally:
            self._prior = previous

    def _get_action_dist_from_latent(self, latent_pi: torch.Tensor) -> Distribution:
        """Gaussian with mean ``action_net(latent_pi) + prior`` and SB3's state-independent ``log_std``."""
        if self._prior is None:
            raise RuntimeError(
                f"{type(self).__name__} builds its action distribution only inside forward, evaluate_actions or "
                f"get_distribution: the budget prior needs the observation. Call one of those"
            )
        if self._prior.shape[0] != latent_pi.shape[0]:
            raise RuntimeError(
                f"budget prior has {self._prior.shape[0]} rows but the latent has {latent_pi.shape[0]}; the "
                f"observations and the latent must be the same batch"
            )
        mean_actions = self.action_net(latent_pi) + self._prior.to(latent_pi.dtype)
        return self.action_dist.proba_distribution(mean_actions, self.log_std)


class BudgetResidualPolicy(_BudgetResidual):
    """Actor-critic MLP policy (PPO, A2C) whose Gaussian mean is ``action_net(latent) + a0(budget)``.

    See the module docstring for the prior, the initialisation and how this differs from Chen et al.

    Args:
        observation_space: The env's observation space (1-D ``Box``).
        action_space: The env's action space (1-D ``Box``; dim 0 is the keep ratio).
        lr_schedule: Learning-rate schedule (given by the algorithm).
        budget_index: Position of the MAC budget in the observation (``env.unwrapped.budget_index``). Required;
            :func:`complete_policy_kwargs` fills it.
        min_keep: The env's smallest keep ratio (action −1). Required; filled like ``budget_index``.
        mean_init_scale: Factor on ``action_net``'s default-initialised weights (its bias is 0). Default 0.2.
        macs_curve: ``(c0, c1, c2)`` of the uniform-ratio MAC curve (:func:`uniform_macs_curve`). Default
            ``(0, 0, 1)``, i.e. prior keep ratio ``sqrt(B)``; :func:`complete_policy_kwargs` fits the env's.
        log_std_init: Initial ``log σ`` of every action dimension. Default −4.0 (σ ≈ 0.018).
        **kwargs: Everything else ``ActorCriticPolicy`` takes (``net_arch``, ``activation_fn``, ...) except
            ``use_sde=True``.

    Raises:
        ValueError: A missing or out-of-range ``budget_index`` / ``min_keep``, a non-Box space, a bad
            ``macs_curve`` or ``use_sde=True``.
    """

    def forward(
        self, obs: torch.Tensor, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``ActorCriticPolicy.forward`` (actions, values, log-probs) with the budget prior in the mean."""
        with self._observing(obs):
            return super().forward(obs, deterministic)

    def evaluate_actions(
        self, obs: PyTorchObs, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``ActorCriticPolicy.evaluate_actions`` (values, log-probs, entropy) with the budget prior in the mean."""
        with self._observing(obs):
            return super().evaluate_actions(obs, actions)

    def get_distribution(self, obs: PyTorchObs) -> Distribution:
        """``ActorCriticPolicy.get_distribution`` with the budget prior in the mean (``predict`` uses it)."""
        with self._observing(obs):
            return super().get_distribution(obs)


class BudgetResidualLstmPolicy(_BudgetResidual, RecurrentActorCriticPolicy):
    """sb3-contrib's recurrent actor-critic (RecurrentPPO) with the Gaussian mean ``action_net(h) + a0(budget)``.

    See the module docstring for the prior, the initialisation and how this differs from Chen et al. Takes the
    arguments of :class:`BudgetResidualPolicy` plus ``RecurrentActorCriticPolicy``'s (``lstm_hidden_size``,
    ``n_lstm_layers``, ``shared_lstm``, ``enable_critic_lstm``, ``lstm_kwargs``). Observations of a training
    minibatch are RecurrentPPO's padded sequences, row for row with the LSTM output, so the prior lines up.
    Unlike sb3-contrib's class it also records its LSTM arguments for ``policy.save`` / ``load``.
    """

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            lstm_hidden_size=self.lstm_output_dim,
            n_lstm_layers=self.lstm_actor.num_layers,
            shared_lstm=self.shared_lstm,
            enable_critic_lstm=self.enable_critic_lstm,
            lstm_kwargs=self.lstm_kwargs,
        )
        return data

    def forward(  # type: ignore[override]
        self,
        obs: torch.Tensor,
        lstm_states: RNNStates,
        episode_starts: torch.Tensor,
        deterministic: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, RNNStates]:
        """``RecurrentActorCriticPolicy.forward`` with the budget prior in the mean."""
        with self._observing(obs):
            return RecurrentActorCriticPolicy.forward(self, obs, lstm_states, episode_starts, deterministic)

    def evaluate_actions(  # type: ignore[override]
        self, obs: torch.Tensor, actions: torch.Tensor, lstm_states: RNNStates, episode_starts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``RecurrentActorCriticPolicy.evaluate_actions`` with the budget prior in the mean."""
        with self._observing(obs):
            return RecurrentActorCriticPolicy.evaluate_actions(self, obs, actions, lstm_states, episode_starts)

    def get_distribution(  # type: ignore[override]
        self, obs: torch.Tensor, lstm_states: tuple[torch.Tensor, torch.Tensor], episode_starts: torch.Tensor
    ) -> tuple[Distribution, tuple[torch.Tensor, ...]]:
        """``RecurrentActorCriticPolicy.get_distribution`` with the prior in the mean (``predict`` uses it)."""
        with self._observing(obs):
            return RecurrentActorCriticPolicy.get_distribution(self, obs, lstm_states, episode_starts)


#: Policies by name, for ``policy:`` in the hyperparameter YAML (SB3's own aliases such as ``MlpPolicy`` are
#: resolved by the algorithms themselves).
POLICIES: Registry[type[ActorCriticPolicy]] = Registry("policy")
POLICIES.add("BudgetResidualPolicy", BudgetResidualPolicy)
POLICIES.add("BudgetResidualLstmPolicy", BudgetResidualLstmPolicy)


def list_policies() -> list[str]:
    """Names of the registered policies, sorted."""
    return POLICIES.names()


def get_policy(name: str) -> type[ActorCriticPolicy]:
    """The policy class registered as ``name``.

    Raises:
        ValueError: ``name`` is unknown; the message suggests close matches and lists every registered name.
    """
    return POLICIES.get(name)


def is_budget_residual(policy: Any) -> bool:
    """Whether ``policy`` (a class, or a name in :data:`POLICIES`) reads the budget prior from the observation."""
    if isinstance(policy, str):
        policy = POLICIES.get(policy) if policy in POLICIES else None
    return inspect.isclass(policy) and issubclass(policy, _BudgetResidual)


def complete_policy_kwargs(policy: Any, policy_kwargs: dict[str, Any] | None, env: Any) -> dict[str, Any]:
    """Fill a budget-residual policy's env-dependent arguments from ``env``; other policies pass through.

    For a budget-residual policy (by class or registry name) the arguments not already in ``policy_kwargs``
    are read from the environment's answer to ``pruning_target()`` (:func:`agents.unwrap.pruning_target`):
    ``budget_index``, ``min_keep`` and ``macs_curve`` (:func:`uniform_macs_curve` of its MAC coefficients), so any
    ``VecEnv`` works, a ``SubprocVecEnv`` too. All are plain numbers, so the model saves and loads with its kwargs.
    The curve is that of the model's full widths: with a fixed static plan in the runtime env (R_r < 1), or a
    runtime policy in the loop of the static env, the prior is an approximation.

    Args:
        policy: A policy class, a name in :data:`POLICIES`, or any other SB3 policy (``"MlpPolicy"``).
        policy_kwargs: The policy keyword arguments so far, or ``None``; not modified.
        env: The env the model is built on: a PruneGym env, wrapped or not, or any ``VecEnv`` of them
            (``RuntimePruningVecEnv``, ``DummyVecEnv``, ``SubprocVecEnv``).

    Returns:
        A new dict: ``policy_kwargs`` plus the filled arguments.

    Raises:
        ValueError: The policy is budget-residual, ``budget_index`` or ``min_keep`` is not given and the env is
            not a PruneGym env (it has no ``pruning_target()``).
    """
    out = dict(policy_kwargs or {})
    if not is_budget_residual(policy):
        return out
    name = policy if isinstance(policy, str) else policy.__name__
    if all(key in out for key in ("budget_index", "min_keep", "macs_curve")):
        return out
    try:
        spec = pruning_target(env)
    except TypeError as err:  # not a PruneGym env: only the curve may be left out
        key = next((k for k in ("budget_index", "min_keep") if k not in out), None)
        if key is None:
            return out
        raise ValueError(
            f"{name} reads the MAC budget from the observation, but {err}, so it has no "
            f"{key}. Use it on a PruneGym env ({RUNTIME_ENV_ID}, {STATIC_ENV_ID}, "
            f"RuntimePruningVecEnv), pass policy_kwargs {key}=..., or use a plain policy such as MlpPolicy"
        ) from err
    found: dict[str, Any] = {"budget_index": spec.budget_index, "min_keep": spec.min_keep}
    out.update({key: value for key, value in found.items() if key not in out})
    if "macs_curve" not in out:
        out["macs_curve"] = list(uniform_macs_curve(spec.macs))
    return out
