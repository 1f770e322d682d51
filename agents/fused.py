"""A trained runtime agent fused into the model: plain PyTorch, no stable-baselines3 and no numpy at inference.

:class:`envs.runtime.PolicyRuntimeSource` asks a policy for every unit's keep ratio through SB3's
``predict``: a numpy observation is built, converted to a tensor, run through the policy, converted back and
mapped to a ratio, once per unit and forward pass. At batch 1 that bookkeeping costs more than the pruned
convolutions save. This module converts the *actor* of a trained agent into a :class:`FusedAgent`, an
``nn.Module`` that reads the unit's GAP and ``u_r`` tensors (as a :data:`pruning.plan.RuntimeSource` sees
them) and returns the keep ratios, computing exactly what ``PolicyRuntimeSource(..., deterministic=True)``
computes:

1. the observation of :func:`envs.runtime.runtime_observation`: GAP and ``u_r`` zero-padded to the env's
   widths, clipped to ``±OBS_BOUND``, then ``t / (L - 1)``, the budget and the committed MAC fraction;
2. the actor's deterministic action: the Gaussian mean of PPO / A2C (``MlpPolicy``) plus the budget prior of
   :class:`agents.policies.BudgetResidualPolicy`, the same after an LSTM for RecurrentPPO (``MlpLstmPolicy``,
   :class:`agents.policies.BudgetResidualLstmPolicy`; the state is carried from unit to unit and starts at 0
   at unit 0), ``tanh`` of the mean for SAC, the actor network for TD3 / DDPG; clipped to the action space
   (squashed actors: rescaled to it) as SB3's ``predict`` does;
3. ``action_offset`` and :func:`envs.runtime.action_to_ratio` (clip to ``[-1, 1]``, affine map to
   ``[min_keep, 1]``, rounding to 6 decimals).

The operations are SB3's own modules (``nn.Linear``, activations, ``nn.LSTM``, deep-copied) applied in SB3's
order on the same float32 tensors, so the ratios are bit for bit those of ``predict`` (the tests check it for
every supported policy). The budget prior is a constant for a fixed budget and is computed once, by the
policy's own ``budget_prior``.

:class:`FusedRuntimeSource` is the drop-in replacement for ``PolicyRuntimeSource`` (same arguments, a
subclass, so ``bind`` and every ``isinstance`` check keep working): it keeps the committed-MAC bookkeeping
(Python integers at batch 1, integer tensors for a batch) and calls the fused agent, TorchScript-compiled by
default (``bench/runtime_latency.py``, ResNet-20 at batch 1 on one thread: 2.53 ms per image against 2.70 ms
eager and 4.83 ms through ``predict``). :meth:`FusedRuntimeSource.scriptable` puts it inside a TorchScript
model (:func:`pruning.deploy.dynamic_deployable`: 1.69 ms): by default with the observation's constant parts
folded into the first layer, and for prefix-order units with the keep count read from a table of float32
thresholds on the actor's output (:func:`count_thresholds`, exact); :meth:`FusedRuntimeSource.traceable` puts
it inside the ONNX form (:func:`pruning.deploy.dynamic_onnx_deployable`).
:func:`runtime_source` returns it when the policy can be converted and otherwise falls back to
``PolicyRuntimeSource`` with a logged warning.

Example:
    >>> import torch
    >>> from agents.algos import make_model
    >>> from envs.runtime import RuntimePruningVecEnv
    >>> from pruning.export import DynamicModel, export_static
    >>> env = RuntimePruningVecEnv(2, model="tiny_cnn", budget=0.5, num_images=8)
    >>> agent, _ = make_model("ppo", env, {"policy": "BudgetResidualPolicy", "n_steps": 8, "batch_size": 8}, seed=0)
    >>> source = runtime_source(agent, env.model, budget=0.5)
    >>> type(source).__name__
    'FusedRuntimeSource'
    >>> dyn = DynamicModel(export_static(env.model), source)
    >>> _ = source.bind(dyn)
    >>> dyn(torch.randn(1, 3, 32, 32)).shape
    torch.Size([1, 10])
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from envs.runtime import OBS_BOUND, RATIO_DECIMALS, PolicyRuntimeSource
from pruning.export import last_kept_count, prefix_count, runtime_count
from pruning.gating import gated_units
from pruning.plan import RATIO_EPS

__all__ = [
    "FusedActor",
    "FusedAgent",
    "FusedRuntimeSource",
    "NotFusableError",
    "action_ratio",
    "count_thresholds",
    "fuse_policy",
    "runtime_source",
]

log = logging.getLogger(__name__)


class NotFusableError(TypeError):
    """The policy cannot be converted into a :class:`FusedAgent` (use ``PolicyRuntimeSource`` instead)."""


class FusedActor(nn.Module):
    """The deterministic actor of an SB3 policy, on float32 observations ``(N, obs_dim)``.

    ``action = out(head(net(features)))`` with ``features`` the observation (SB3's ``FlattenExtractor``) or,
    with an LSTM, its output for this step. ``out`` is, for a Gaussian actor (PPO, A2C, RecurrentPPO),
    ``clip(mean + prior, low, high)``; for a squashed actor (SAC) ``rescale(tanh(mean))``; for TD3 / DDPG,
    whose network ends in ``tanh``, ``rescale(mean)``; ``rescale(a) = low + 0.5·(a + 1)·(high - low)`` is SB3's
    ``unscale_action``.

    Args:
        net: The latent network (SB3's ``mlp_extractor.policy_net``, SAC's ``latent_pi``, TD3's ``mu``).
        head: The mean layer (``action_net``, ``mu``), or ``nn.Identity`` when ``net`` already ends in it.
        low: The action space's lower bounds, float32 ``(A,)``.
        high: Its upper bounds.
        prior: Added to the mean before clipping, float32 ``(1, A)`` (the budget prior), or ``None``.
        squash: Rescale instead of clipping (SB3's ``squash_output``).
        tanh: Apply ``tanh`` to the mean first (SAC).
        lstm: The actor's LSTM (RecurrentPPO), or ``None``.
    """

    if TYPE_CHECKING:  # buffers; TorchScript reads class annotations, so mypy alone sees these
        low: torch.Tensor
        high: torch.Tensor
        prior: torch.Tensor

    def __init__(
        self,
        net: nn.Module,
        head: nn.Module,
        *,
        low: torch.Tensor,
        high: torch.Tensor,
        prior: torch.Tensor | None = None,
        squash: bool = False,
        tanh: bool = False,
        lstm: nn.LSTM | None = None,
    ) -> None:
        super().__init__()
        self.lstm = lstm
        self.net = net
        self.head = head
        self.register_buffer("low", low.detach().float().clone())
        self.register_buffer("high", high.detach().float().clone())
        self.register_buffer("prior", torch.zeros(1, low.numel()) if prior is None else prior.detach().float().clone())
        self.has_prior = prior is not None
        self.squash = bool(squash)
        self.tanh = bool(tanh)
        self.recurrent = lstm is not None

    def forward(
        self, obs: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(actions (N, A), h, c)``; ``h`` and ``c`` are the LSTM state ``(layers, N, hidden)`` (unused without)."""
        features = obs
        if self.lstm is not None:
            out, (h, c) = self.lstm(obs.unsqueeze(0), (h, c))
            features = torch.flatten(out.transpose(0, 1), 0, 1)
        mean = self.head(self.net(features))
        if self.squash:
            if self.tanh:
                mean = torch.tanh(mean)
            return self.low + (0.5 * (mean + 1.0) * (self.high - self.low)), h, c
        if self.has_prior:
            mean = mean + self.prior
        return torch.clamp(mean, self.low, self.high), h, c


class FusedAgent(nn.Module):
    """A runtime agent as a module: ``(unit, GAP, u_r, committed MAC fraction, state) -> (keep ratios, state)``.

    Built by :func:`fuse_policy`. ``forward`` builds the runtime env's observation from the tensors, runs the
    :class:`FusedActor` and maps the action to a keep ratio as ``PolicyRuntimeSource`` does; it holds no
    state between calls (:class:`FusedRuntimeSource` carries the committed MACs and the LSTM state).

    Args:
        actor: The converted actor.
        num_units: L, the prunable units of the model.
        gap_width: Width of the GAP part of the observation (the widest unit input).
        ur_width: Width of the ``u_r`` part (the widest unit).
        budget: The MAC budget shown to the agent.
        min_keep: Keep ratio of action −1.
        action_offset: Added to every action before the ratio mapping.
        lstm_shape: ``(layers, hidden)`` of the actor's LSTM state, or ``None``.
    """

    if TYPE_CHECKING:
        suffix: torch.Tensor
        zeros: torch.Tensor

    def __init__(
        self,
        actor: FusedActor,
        *,
        num_units: int,
        gap_width: int,
        ur_width: int,
        budget: float,
        min_keep: float,
        action_offset: float = 0.0,
        lstm_shape: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.actor = actor
        self.num_units = int(num_units)
        self.gap_width = int(gap_width)
        self.ur_width = int(ur_width)
        self.budget = float(budget)
        self.min_keep = float(min_keep)
        self.action_offset = float(action_offset)
        self.obs_bound = float(OBS_BOUND)
        self.decimals = int(RATIO_DECIMALS)
        self.lstm_layers, self.lstm_hidden = lstm_shape if lstm_shape is not None else (1, 0)
        # the constant part of every unit's observation tail, [t / (L - 1), budget], cast once as numpy does
        steps = [min(t / max(self.num_units - 1, 1), 1.0) for t in range(self.num_units)]
        tail = torch.tensor([[s, self.budget] for s in steps], dtype=torch.float64).float()
        # per unit t: [0]*(ur_width - C_t) + [t / (L - 1), budget], the part of the observation between u_r and
        # the committed fraction, as row t of a table sliced from column C_t; and zeros for the GAP's padding
        self.register_buffer("suffix", torch.cat([torch.zeros(self.num_units, self.ur_width), tail], 1))
        self.register_buffer("zeros", torch.zeros(1, self.gap_width))

    @torch.jit.export
    def initial_state(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The LSTM state at unit 0 of ``n`` inputs (zeros; empty without an LSTM)."""
        z = torch.zeros(self.lstm_layers, n, self.lstm_hidden, device=self.zeros.device)
        return z, z

    def forward(
        self, unit: int, gap: torch.Tensor, u_r: torch.Tensor, committed: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep ratios float64 ``(N,)`` of ``unit`` and the next state.

        Args:
            unit: The unit index t.
            gap: GAP of the unit's input at its original width, ``(N, C_in)`` (a runtime source's view).
            u_r: The unit's ``u_r`` at its original width, ``(N, C_out)``.
            committed: MAC fraction committed by units ``0..t-1``, float64 ``(N,)``.
            h: LSTM hidden state ``(layers, N, hidden)`` (:meth:`initial_state` at unit 0).
            c: LSTM cell state.

        A non-finite GAP or ``u_r`` gives NaN ratios (the caller raises).
        """
        obs, finite = self._observation(unit, gap, u_r, committed.float().unsqueeze(1))
        actions, h, c = self.actor(obs, h, c)
        # envs.runtime.action_to_ratio, in float64 as there
        a = (actions[:, 0].double() + self.action_offset).clamp(-1.0, 1.0)
        r = self.min_keep + (a + 1.0) * 0.5 * (1.0 - self.min_keep)
        r = torch.round(r, decimals=self.decimals).clamp(self.min_keep, 1.0)
        return (r if finite else torch.full_like(r, math.nan)), h, c

    @torch.jit.export
    def action_one(
        self, unit: int, gap: torch.Tensor, u_r: torch.Tensor, committed: float, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[float, torch.Tensor, torch.Tensor]:
        """The actor's action (dimension 0, clipped or rescaled as SB3's ``predict``) for one input.

        The batch-1 fast path of :class:`FusedRuntimeSource`, which maps the float to a keep ratio in Python
        (the same float64 operations as :func:`envs.runtime.action_to_ratio`). NaN for non-finite features.
        """
        obs, finite = self._observation(unit, gap, u_r, torch.full([1, 1], committed, device=gap.device))
        actions, h, c = self.actor(obs, h, c)
        return (float(actions[0, 0]) if finite else math.nan), h, c

    def _observation(
        self, unit: int, gap: torch.Tensor, u_r: torch.Tensor, committed: torch.Tensor
    ) -> tuple[torch.Tensor, bool]:
        """``runtime_observation`` as float32 ``(N, obs_dim)`` (features clipped) and whether it is all finite.

        ``committed`` is the committed MAC fraction as a float32 column ``(N, 1)``. One ``cat``: the zero padding
        and the constant ``[t / (L - 1), budget]`` are slices of buffers.
        """
        obs = self._unclipped(unit, gap, u_r, committed)
        # a sum is finite exactly when every term is (up to an overflow of features beyond ~1e36, which are not
        # sane activations); half the cost of isfinite().all() at batch 1. The tail (t / (L - 1), budget,
        # committed fraction) lies in [0, ~1]: clipping it changes nothing.
        return obs.clamp(-self.obs_bound, self.obs_bound), math.isfinite(float(obs.sum()))

    @torch.jit.export
    def features(self, unit: int, gap: torch.Tensor, u_r: torch.Tensor, committed: torch.Tensor) -> torch.Tensor:
        """``runtime_observation`` as float32 ``(N, obs_dim)`` (features clipped), with no finiteness check.

        What a traced (ONNX) model computes, where nothing can raise; ``committed`` is a float32 column ``(N, 1)``.
        """
        return self._unclipped(unit, gap, u_r, committed).clamp(-self.obs_bound, self.obs_bound)

    def _unclipped(self, unit: int, gap: torch.Tensor, u_r: torch.Tensor, committed: torch.Tensor) -> torch.Tensor:
        n = gap.shape[0]
        suffix = self.suffix[unit : unit + 1, u_r.shape[1] :]
        obs = torch.cat(
            [
                gap.float(),
                self.zeros[:, : self.gap_width - gap.shape[1]].expand(n, -1),
                u_r.float(),
                suffix.expand(n, -1),
                committed,
            ],
            1,
        )
        return obs


# -----------------------------------------------------------------------------------------------------------
# conversion
# -----------------------------------------------------------------------------------------------------------


def _sb3_policy(policy: Any) -> Any:
    """The ``BasePolicy`` of an algorithm (``model.policy``) or the policy itself."""
    inner = getattr(policy, "policy", None)
    return inner if isinstance(inner, nn.Module) else policy


def _check_flatten(extractor: Any, what: str) -> None:
    from stable_baselines3.common.torch_layers import FlattenExtractor

    if type(extractor) is not FlattenExtractor:
        raise NotFusableError(
            f"{what} uses the features extractor {type(extractor).__name__}; only SB3's "
            "FlattenExtractor (the default for vector observations) can be fused"
        )


def _actor_of(p: Any, obs_dim: int, budget: float) -> tuple[FusedActor, tuple[int, int] | None]:
    """Convert SB3 policy ``p`` (an exact known class) into a :class:`FusedActor` and its LSTM state shape."""
    from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
    from stable_baselines3.common.distributions import DiagGaussianDistribution
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.sac.policies import SACPolicy
    from stable_baselines3.td3.policies import TD3Policy

    from agents.policies import BudgetResidualLstmPolicy, BudgetResidualPolicy

    name = type(p).__name__
    space = p.action_space
    if not isinstance(space, spaces.Box) or len(space.shape) != 1:
        raise NotFusableError(f"{name} acts in {space}; a fused agent needs a 1-D Box action space")
    low, high = torch.as_tensor(space.low), torch.as_tensor(space.high)
    kind = type(p)
    if kind in (ActorCriticPolicy, BudgetResidualPolicy, RecurrentActorCriticPolicy, BudgetResidualLstmPolicy):
        if p.use_sde or p.squash_output or not isinstance(p.action_dist, DiagGaussianDistribution):
            raise NotFusableError(f"{name} with gSDE or squashed outputs cannot be fused; train it with use_sde=False")
        _check_flatten(p.pi_features_extractor, name)
        prior = None
        if kind in (BudgetResidualPolicy, BudgetResidualLstmPolicy):
            if p.budget_index != obs_dim - 2:
                raise NotFusableError(
                    f"{name} reads its budget at observation index {p.budget_index}, not at "
                    f"{obs_dim - 2} where the runtime env puts it"
                )
            obs = torch.zeros(1, obs_dim)
            obs[0, -2] = torch.tensor(budget, dtype=torch.float64).float()
            with torch.no_grad():
                prior = p.budget_prior(obs.to(p.device)).cpu()
        lstm = None
        shape = None
        if kind in (RecurrentActorCriticPolicy, BudgetResidualLstmPolicy):
            lstm = copy.deepcopy(p.lstm_actor).cpu()
            if lstm.batch_first or lstm.proj_size or lstm.bidirectional:
                raise NotFusableError(
                    f"{name}'s LSTM is not the standard one (batch_first, proj_size or "
                    "bidirectional); it cannot be fused"
                )
            shape = (lstm.num_layers, lstm.hidden_size)
        net = copy.deepcopy(p.mlp_extractor.policy_net).cpu()
        actor = FusedActor(net, copy.deepcopy(p.action_net).cpu(), low=low, high=high, prior=prior, lstm=lstm)
        return actor, shape
    if kind is SACPolicy:
        a = p.actor
        if a.use_sde:
            raise NotFusableError("SAC with gSDE cannot be fused; train it with use_sde=False")
        _check_flatten(a.features_extractor, name)
        net, head = copy.deepcopy(a.latent_pi).cpu(), copy.deepcopy(a.mu).cpu()
        return FusedActor(net, head, low=low, high=high, squash=True, tanh=True), None
    if kind is TD3Policy:
        _check_flatten(p.actor.features_extractor, name)
        return FusedActor(copy.deepcopy(p.actor.mu).cpu(), nn.Identity(), low=low, high=high, squash=True), None
    raise NotFusableError(
        f"{name} cannot be fused: supported are PPO / A2C with MlpPolicy or BudgetResidualPolicy, RecurrentPPO "
        "with MlpLstmPolicy or BudgetResidualLstmPolicy, SAC and TD3 / DDPG with MlpPolicy"
    )


def _script(module: nn.Module) -> nn.Module:
    """TorchScript ``module`` (deprecated in recent PyTorch, still the fastest option here at batch 1)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        return torch.jit.script(module)


def fuse_policy(
    policy: Any,
    model: nn.Module,
    *,
    budget: float,
    min_keep: float = 0.1,
    action_offset: float = 0.0,
    script: bool = False,
) -> nn.Module:
    """Convert a trained runtime agent into a :class:`FusedAgent` (plain PyTorch, on the CPU, eval mode).

    Args:
        policy: A trained SB3 / sb3-contrib algorithm (``PPO``, ``A2C``, ``RecurrentPPO``, ``SAC``, ``TD3``,
            ``DDPG``) or its ``policy``: ``MlpPolicy``, :class:`agents.policies.BudgetResidualPolicy`,
            ``MlpLstmPolicy``, :class:`agents.policies.BudgetResidualLstmPolicy` (exact classes: a subclass
            may compute something else), with SB3's default features extractor and no gSDE.
        model: The gated model the agent prunes (or its export or ``DynamicModel``): defines the number of
            units and the observation widths.
        budget: The MAC budget shown to the agent.
        min_keep: The env's smallest keep ratio (action −1). Default 0.1, the env's.
        action_offset: Added to every action before the ratio mapping (see ``PolicyRuntimeSource``).
        script: Return the agent compiled with ``torch.jit.script`` (same results, less overhead per call).

    Returns:
        The :class:`FusedAgent` (a ``torch.jit.ScriptModule`` of it with ``script=True``).

    Raises:
        NotFusableError: the policy's class, extractor, distribution or action space is not supported.
        ValueError: the policy's observations do not have the runtime env's layout for ``model``.
    """
    p = _sb3_policy(policy)
    obs_space = getattr(p, "observation_space", None)
    if not isinstance(p, nn.Module) or not isinstance(obs_space, spaces.Box) or len(obs_space.shape) != 1:
        raise NotFusableError(
            f"{type(policy).__name__} is not an SB3 policy on vector observations; it cannot be "
            "fused (PolicyRuntimeSource runs any predict-protocol policy)"
        )
    units = gated_units(model)
    gap_width = max(g.full_in_channels for g in units)
    ur_width = max(g.full_channels for g in units)
    obs_dim = gap_width + ur_width + 3
    if obs_space.shape[0] != obs_dim:
        raise ValueError(
            f"the policy observes {obs_space.shape[0]} values but the runtime env of this model shows {obs_dim} "
            f"(GAP {gap_width} + u_r {ur_width} + 3): the agent was trained on another architecture"
        )
    actor, lstm_shape = _actor_of(p, obs_dim, budget)
    agent = FusedAgent(
        actor, num_units=len(units), gap_width=gap_width, ur_width=ur_width, budget=budget, min_keep=min_keep,
        action_offset=action_offset, lstm_shape=lstm_shape,
    ).eval()  # fmt: skip
    for param in agent.parameters():
        param.requires_grad_(False)
    return _script(agent) if script else agent


# -----------------------------------------------------------------------------------------------------------
# the runtime source
# -----------------------------------------------------------------------------------------------------------


class FusedRuntimeSource(PolicyRuntimeSource):
    """``PolicyRuntimeSource`` with the policy fused into a :class:`FusedAgent`: the same ratios, far cheaper.

    Takes the arguments of :class:`envs.runtime.PolicyRuntimeSource` (and ``bind``s the same way); only
    deterministic actions can be fused. The committed MACs are Python integers when the model reports its
    kept counts as integers (:class:`pruning.export.DynamicModel` at batch 1), integer tensors otherwise.

    Args:
        policy: A policy :func:`fuse_policy` converts.
        model: The gated model the source prunes (see ``PolicyRuntimeSource``).
        budget: The MAC budget shown to the agent.
        min_keep: The env's smallest keep ratio. Default 0.1.
        deterministic: Must be ``True`` (a fused agent has no sampling); ``False`` raises.
        action_offset: Added to every action before the ratio mapping. Default 0.
        script: Run the agent compiled with TorchScript (default ``True``; ``False`` runs it eagerly).

    Raises:
        NotFusableError: the policy cannot be fused (:func:`runtime_source` falls back instead) or
            ``deterministic`` is false.
    """

    agent: Any  # the FusedAgent, or its TorchScript module

    def __init__(
        self,
        policy: Any,
        model: nn.Module,
        *,
        budget: float,
        min_keep: float = 0.1,
        deterministic: bool = True,
        action_offset: float = 0.0,
        script: bool = True,
    ) -> None:
        if not deterministic:
            raise NotFusableError("a fused agent acts deterministically; use PolicyRuntimeSource to sample actions")
        # fused first: a policy that does not convert fails before the cost model is traced
        self.fused = fuse_policy(policy, model, budget=budget, min_keep=min_keep, action_offset=action_offset)
        self.agent = _script(self.fused) if script else self.fused
        super().__init__(policy, model, budget=budget, min_keep=min_keep, action_offset=action_offset)
        self._device = torch.device("cpu")
        self._lstm = (int(self.agent.lstm_layers), int(self.agent.lstm_hidden))
        self._counts: list[Any] = []
        self._hc = self._initial_state(0)
        self._charged: Any = 0
        self._n = -1

    @property
    def lstm_shape(self) -> tuple[int, int]:
        """``(layers, hidden size)`` of the agent's LSTM state (hidden size 0 for a feed-forward agent)."""
        return self._lstm

    def _initial_state(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.zeros(self._lstm[0], n, self._lstm[1], device=self._device)  # what FusedAgent.initial_state gives
        return z, z

    def _ratio_of(self, action: float) -> float:
        """:func:`envs.runtime.action_to_ratio` of one (finite) action, in Python floats."""
        return action_ratio(action, self.action_offset, self.min_keep, RATIO_DECIMALS)

    def scriptable(self, fold: bool = True) -> nn.Module:
        """This source as a TorchScript-compatible module, for :func:`pruning.deploy.dynamic_deployable`.

        The module has ``ratio(unit, gap, u_r) -> float`` (batch 1) and ``record(unit, kept)`` (the kept count
        of each unit, which the committed MACs are charged with); the bookkeeping state lives in tensors that
        every unit's copy shares.

        Args:
            fold: Fold the observation's constant parts into the agent's first layer (PPO / A2C actors; about
                half the operations per unit, the same ratios up to float rounding of that layer). ``False``:
                the fused agent's own operations, bit for bit the eager source's ratios.
        """
        return _ScriptedSource(self, fold)

    def traceable(self) -> nn.Module:
        """This source as a module of tensor operations only, for :func:`pruning.deploy.dynamic_onnx_deployable`.

        The module has ``reset()`` (a new image), ``ratio(unit, gap, u_r) -> float64 (1,)`` and ``record(unit,
        kept)`` (``kept``: int64 ``(1,)``); no Python number is read from a tensor, so an exporter that traces it
        records every step (the committed MACs too) as graph operations.
        """
        return _TracedSource(self)

    def _advance(self, t: int, n: int, device: torch.device) -> Any:
        """MACs committed before unit ``t`` of a batch of ``n``: an int, or int64 ``(n,)`` for batched counts.

        The bookkeeping of ``PolicyRuntimeSource``: unit 0 starts a forward pass (and the LSTM state); unit
        ``t`` charges unit ``t - 1`` with its kept outputs times its kept inputs (its producer's kept count).
        """
        if device != self._device:
            self.agent.to(device)
            self._device = device
        macs = self.mac_coefficients
        if t == 0:
            self._n = n
            self._charged = macs.fixed_macs
            self._counts = [None] * len(self.units)
            self._hc = self._initial_state(n)
        elif n != self._n:
            raise RuntimeError(
                f"unit {t} was called with {n} inputs before unit 0 of that batch; "
                "a forward pass must run the units in index order"
            )
        else:
            s = t - 1
            kept = last_kept_count(self.units[s])
            self._charged = self._charged + macs.unit_macs(s, kept, self._counts)
            self._counts[s] = kept
        self.calls += 1
        return self._charged

    def __call__(self, unit_index: int, gap: torch.Tensor, u_r: torch.Tensor) -> torch.Tensor:
        """Keep ratios ``(N,)`` (float64) of unit ``unit_index``, as ``PolicyRuntimeSource`` returns them."""
        t = int(unit_index)
        return self._ratios(t, gap, u_r, self._advance(t, int(gap.shape[0]), gap.device))

    def single(self, unit_index: int, gap: torch.Tensor, u_r: torch.Tensor) -> float:
        """The keep ratio of unit ``unit_index`` for a batch of one input, as a Python float.

        What :class:`pruning.export.DynamicModel` asks at batch 1 (it saves creating and reading a tensor);
        equal to ``float(self(unit_index, gap, u_r))``.
        """
        t = int(unit_index)
        charged = self._advance(t, int(gap.shape[0]), gap.device)
        if isinstance(charged, torch.Tensor) or self._n != 1:
            return float(self._ratios(t, gap, u_r, charged))
        a, h, c = self.agent.action_one(t, gap, u_r, charged / self.base_macs, *self._hc)
        self._hc = (h, c)
        if a != a:  # NaN: non-finite features
            raise _non_finite(t)
        return self._ratio_of(a)

    def _ratios(self, t: int, gap: torch.Tensor, u_r: torch.Tensor, charged: Any) -> torch.Tensor:
        n = int(gap.shape[0])
        if isinstance(charged, torch.Tensor):
            committed = charged.to(gap.device, torch.float64) / self.base_macs
        else:
            committed = torch.full((n,), charged / self.base_macs, dtype=torch.float64, device=gap.device)
        ratios, h, c = self.agent(t, gap, u_r, committed, *self._hc)
        self._hc = (h, c)
        if not bool(torch.isfinite(ratios).all()):
            raise _non_finite(t)
        return ratios  # type: ignore[no-any-return]


def action_ratio(action: float, offset: float, min_keep: float, decimals: int) -> float:
    """:func:`envs.runtime.action_to_ratio` of one finite action in Python floats (TorchScript-compatible).

    The same float64 operations as numpy's: clip, affine map, ``np.round`` (scale by ``10**decimals``, round
    half to even, unscale), clip.
    """
    a = min(max(action + offset, -1.0), 1.0)
    r = min_keep + (a + 1.0) * 0.5 * (1.0 - min_keep)
    scale = 10.0**decimals
    y = r * scale
    f = math.floor(y)
    d = y - f  # exact: y and its floor are within 1 of each other
    if d > 0.5 or (d == 0.5 and f % 2 == 1):
        f += 1
    return min(max(f / scale, min_keep), 1.0)


def _ordered(key: int) -> float:
    """The float32 value of an ordered key (keys order as the floats do; :func:`_key` is the inverse)."""
    bits = key if key >= 0 else (-key) | 0x80000000
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


def _key(value: float) -> int:
    bits = int(np.array([value], dtype=np.float32).view(np.uint32)[0])
    return bits if bits < 0x80000000 else -(bits & 0x7FFFFFFF)


def count_thresholds(count: Callable[[float], int]) -> tuple[int, torch.Tensor]:
    """A monotone step function of one float32 input as ``(base, thresholds)``: ``count(a) = base + #{θ ≤ a}``.

    ``count`` must be non-decreasing on the float32 values (the keep count of an action is: clip, affine map,
    rounding, ``ceil`` and the trade-off rule each are). Every threshold is the smallest float32 at which the count
    reaches the next value, found by bisection on the floats' order, so the table reproduces ``count`` exactly
    on every finite float32; at run time the count is one ``searchsorted`` (or compare-and-sum) instead of the
    Python arithmetic of :func:`action_ratio` and :func:`pruning.export.prefix_count`.

    Returns:
        ``(count at the lowest float32, float32 thresholds)``: ascending, repeated where the count jumps by more
        than 1.
    """
    lo, hi = _key(-3.4028234663852886e38), _key(3.4028234663852886e38)
    base, top = count(_ordered(lo)), count(_ordered(hi))
    thresholds = []
    left = lo
    for j in range(base + 1, top + 1):
        a, b = left, hi  # count(a) < j <= count(b)
        while b - a > 1:
            mid = (a + b) // 2
            if count(_ordered(mid)) >= j:
                b = mid
            else:
                a = mid
        thresholds.append(_ordered(b))
        left = a
    return base, torch.tensor(thresholds, dtype=torch.float32)


class _Affine(nn.Module):
    """``nn.Linear`` as one ``addmm`` on a stored transposed weight (no transpose per call at batch 1)."""

    if TYPE_CHECKING:
        weight_t: torch.Tensor
        bias: torch.Tensor

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.register_buffer("weight_t", linear.weight.detach().t().contiguous())
        self.register_buffer("bias", linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.addmm(self.bias, x, self.weight_t)


def _first_layer(fused: FusedAgent) -> tuple[torch.Tensor, torch.Tensor, nn.Module] | None:
    """The actor's first linear layer (float64 weight ``(hidden, obs_dim)`` and bias) and the rest of the actor.

    Only for plain Gaussian actors (PPO / A2C: linear first layer, no LSTM, no squashing); ``None`` otherwise.
    The rest is ``net[1:]`` then the mean layer's dimension 0 (the budget prior is left to the caller), its
    linear layers as :class:`_Affine`.
    """
    actor = fused.actor
    net, head = actor.net, actor.head
    if actor.recurrent or actor.squash or not isinstance(head, nn.Linear) or not isinstance(net, nn.Sequential):
        return None
    layers = list(net)
    first = layers[0] if layers else head
    if not isinstance(first, nn.Linear) or first.bias is None or head.bias is None:
        return None
    with torch.no_grad():
        mean = nn.Linear(head.in_features, 1)
        mean.weight.copy_(head.weight[:1])
        mean.bias.copy_(head.bias[:1])
        if not layers:  # the mean layer is the first layer
            first = mean
        w, b = first.weight.double(), first.bias.double()
    rest: nn.Module = nn.Sequential()
    if layers:
        rest = nn.Sequential(*(_Affine(m) if isinstance(m, nn.Linear) else m for m in [*layers[1:], mean]))
    return w, b, rest.requires_grad_(False).eval()


def _unit_columns(
    fused: FusedAgent, w: torch.Tensor, b: torch.Tensor, t: int, c_in: int, c: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit ``t``'s part of the first layer ``(w, b)``: ``(W_gap (C_in, H), W_u (C, H), w_committed (H,), b_t (H,))``.

    The observation of unit t is ``[GAP (C_in), zeros, u_r (C), zeros, t / (L - 1), budget, committed]``: its
    zero padding contributes nothing and its constants a fixed term, so the first layer is ``GAP @ W_gap + u_r @
    W_u + committed · w_committed + b_t``, ``b_t`` the bias plus the constant columns times their values (float64).
    """
    gw = fused.gap_width
    step, budget = fused.suffix[t, fused.ur_width].double(), fused.suffix[t, fused.ur_width + 1].double()
    return w[:, :c_in].t(), w[:, gw : gw + c].t(), w[:, -1], b + w[:, -3] * step + w[:, -2] * budget


def _count_rule(unit: Any) -> Callable[[float], int]:
    """The count a keep ratio gives a :class:`pruning.export.DynamicModel` unit.

    In prefix order its keep count (:func:`pruning.export.prefix_count`), else ``k_r``
    (:func:`pruning.export.runtime_count`), which the ``u_r``-order trade-off pruner starts from.
    """
    full, stored = int(unit.full_channels), int(unit.conv.out_channels)
    active = unit.__dict__.get("_active")
    if active is not None and unit.__dict__.get("_prefix"):
        tradeoff = float(unit.tradeoff)
        return lambda r: prefix_count(r, full, stored, int(active), tradeoff, RATIO_EPS)
    return lambda r: runtime_count(r, full, stored, RATIO_EPS)


class _ScriptedSource(nn.Module):
    """:class:`FusedRuntimeSource` as a TorchScript-compatible module (one image at a time).

    Exact (``fold=False``): the fused agent's own operations, so the ratios are bit for bit the eager source's;
    the committed MACs are an int64 tensor. Folded (``fold=True``, plain Gaussian actors, :func:`_first_layer`):
    the observation's padding and constants folded into the first layer (:func:`_unit_columns`), the committed
    MAC fraction a float32 sum of per-unit fractions (one ``add_`` per unit) added to the first layer's output
    times its column (one ``addcmul``), the actor's other linear layers one ``addmm`` each (:class:`_Affine`),
    and each unit's keep count (or ``k_r``) read from a table of float32 thresholds on the actor's output
    (:func:`count_thresholds`); no finiteness check per unit (:func:`pruning.deploy.dynamic_deployable` checks the
    logits instead). The first layer then sums in another order, so an action can differ from the eager source's
    by float rounding; a keep count changes only where that moves the ratio's 6-decimal rounding across a step of
    ``ceil(r·C)`` (never seen in the tests; :func:`pruning.deploy.save_torchscript` checks the logits of the file
    against the eager model's).

    The fastest form is the *lean* one (:meth:`lean_tables`, :meth:`lean_count`): a unit folds its own predictor
    and its stored-to-original channel maps into the agent's first layer, so one ``addmm`` on its GAP gives its
    ``u_r`` and the first layer's output together, with no observation built at the original widths. It drops the
    observation's clip at ``±OBS_BOUND`` (1e4; features that large only come from a diverged network).
    """

    if TYPE_CHECKING:
        agent: Any
        counts: torch.Tensor
        committed: torch.Tensor
        fraction: torch.Tensor
        h: torch.Tensor
        c: torch.Tensor

    def __init__(self, source: FusedRuntimeSource, fold: bool = True) -> None:
        super().__init__()
        self.agent = copy.deepcopy(source.fused).cpu()
        num_units = len(source.units)
        macs = source.mac_coefficients
        self.fixed = int(macs.fixed_macs)
        self.base_macs = int(source.base_macs)
        self.unit_coef = [int(v) for v in macs.unit_coef]
        self.consumer_coef = [int(v) for v in macs.consumer_coef]
        self.producer = [-1 if p is None else int(p) for p in macs.producer]
        self.track = any(p >= 0 for p in self.producer)  # a unit's input width is another unit's kept count
        self.in_channels = [int(v) for v in macs.in_channels]
        self.offset = float(source.action_offset)
        self.min_keep = float(source.min_keep)
        self.decimals = int(RATIO_DECIMALS)
        self.recurrent = bool(self.agent.actor.recurrent)
        self.low, self.high = float(self.agent.actor.low[0]), float(self.agent.actor.high[0])
        self.bound = float(self.agent.obs_bound)
        first = _first_layer(self.agent) if fold else None
        self.fold = first is not None
        # lean_counts computes a batch (per-image committed fractions): folded, fixed input widths
        self.batchable = self.fold and not self.track
        # non-empty lists: TorchScript infers their type from the elements
        self.w1, self.b1, self.wc = [torch.zeros(0)], [torch.zeros(0)], [torch.zeros(0)]
        self.rest: nn.Module = nn.Sequential()
        if first is not None:
            w, b, self.rest = first
            self.w1, self.b1, self.wc = [], [], []
            for t, g in enumerate(source.units):
                w_gap, w_u, w_c, b_t = _unit_columns(self.agent, w, b, t, int(g.full_in_channels), int(g.full_channels))
                self.w1.append(torch.cat([w_gap, w_u]).float().contiguous())
                self.b1.append(b_t.float())
                self.wc.append(w_c.float().view(1, -1))
        self.__dict__["_first"] = first  # float64, for lean_tables (not part of the scripted module)
        # folded: a unit's keep count (prefix order) or k_r (u_r order) as a step function of the actor's output
        prior = float(self.agent.actor.prior[0, 0]) if self.agent.actor.has_prior else None
        self.base_count: list[int] = []
        self.thresholds: list[torch.Tensor] = []
        for g in source.units:
            base, table = count_thresholds(self._count_of(_count_rule(g), prior if self.fold else None))
            self.base_count.append(base)
            self.thresholds.append(table)
        # folded, fixed input widths: unit t's committed fraction for each kept count, float32 (what ``add_`` of the
        # Python float casts to: the same sum, without wrapping a scalar per unit, about 4 µs each at batch 1)
        self.steps = [torch.zeros(0)]
        if self.fold and not self.track:
            self.steps = [
                torch.tensor([(coef * cin + cons) * k / self.base_macs for k in range(int(g.full_channels) + 1)])
                for coef, cin, cons, g in zip(
                    self.unit_coef, self.in_channels, self.consumer_coef, source.units, strict=True
                )
            ]
        layers, hidden = source.lstm_shape
        self.register_buffer("counts", torch.zeros(num_units, dtype=torch.long), persistent=False)
        # the state every unit's copy shares (tensors: a scripted module's copies do not share attributes)
        self.register_buffer("committed", torch.zeros(1, dtype=torch.long), persistent=False)  # exact: MACs
        self.register_buffer("fraction", torch.zeros(1, 1), persistent=False)  # folded: committed MAC fraction
        self.register_buffer("h", torch.zeros(layers, 1, hidden), persistent=False)
        self.register_buffer("c", torch.zeros(layers, 1, hidden), persistent=False)

    def for_unit(self, unit: int) -> _ScriptedSource:
        """This source as unit ``unit``'s own module: the same state tensors, only ``unit``'s tables.

        :func:`pruning.deploy.dynamic_deployable` gives every unit its copy: ``torch.jit.freeze`` refuses a module
        reached from several parents when it writes to its buffers ("attributes values that overlaps"), and an
        unfrozen model reads every parameter and branch anew per call (about 7% of ResNet-20's batch-1 time with
        the agent inside, measured). Distinct modules that hold the same tensors freeze, and the state written by
        one unit (the committed MACs, the LSTM state, the kept counts) is the tensor the next unit reads.
        Submodules (the agent, the actor's other layers) are shared: nothing writes to them.

        The exact form (``fold=False``) returns this module itself, so a model using it stays unfrozen: it raises
        on non-finite features inside the source, and a frozen model raising there crashed TorchScript's error
        report (a segmentation fault building the call stack, torch 2.14); the folded form raises only at the end.
        """
        if not self.fold:
            return self
        view = copy.copy(self)  # shallow: the same tensors and submodules, in dicts of its own
        view._parameters, view._buffers = dict(self._parameters), dict(self._buffers)
        view._modules = dict(self._modules)

        def only(tables: list[torch.Tensor]) -> list[torch.Tensor]:  # no tensor in two copies' lists
            return [t if i == unit else t.new_zeros(0) for i, t in enumerate(tables)]

        view.w1, view.b1, view.wc = only(self.w1), only(self.b1), only(self.wc)
        view.thresholds, view.steps = only(self.thresholds), only(self.steps)
        for name in ("unit_coef", "consumer_coef", "producer", "in_channels", "base_count"):
            setattr(view, name, list(getattr(self, name)))
        return view

    def _count_of(self, rule: Callable[[float], int], prior: float | None) -> Callable[[float], int]:
        """The count ``rule`` gives the ratio of a float32 actor output (``prior``: to be added, then the clip)."""
        low, high = np.float32(self.low), np.float32(self.high)

        def count(a: float) -> int:
            v = np.float32(a)
            if prior is not None:  # FusedActor: clamp(mean + prior, low, high) in float32
                v = min(max(np.float32(v + np.float32(prior)), low), high)
            return rule(action_ratio(float(v), self.offset, self.min_keep, self.decimals))

        return count

    def lean_tables(
        self,
        unit: int,
        pred_weight: torch.Tensor,
        pred_bias: torch.Tensor,
        in_positions: torch.Tensor,
        out_positions: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(W (C_in', H), b (H,))``: unit ``unit``'s first agent layer as one affine map of its stored GAP.

        ``u_r = GAP @ pred_weight.T + pred_bias`` (stored widths); ``in_positions`` / ``out_positions`` map the
        stored input / output channels to their original positions (where the observation holds them). Then
        ``GAP @ W + b`` is the first layer's output before the committed MAC term (:meth:`lean_count` adds it).
        ``None`` for actors that do not fold. Called once, when the model is built (not scripted).
        """
        first = self.__dict__["_first"]
        if first is None:
            return None
        g = self.agent
        w, b, _ = first
        c_in, c = int(g.gap_width), int(g.ur_width)
        w_gap, w_u, _, b_t = _unit_columns(g, w, b, unit, c_in, c)
        w_gap, w_u = w_gap.index_select(0, in_positions.cpu()), w_u.index_select(0, out_positions.cpu())
        p = pred_weight.detach().double().cpu()
        weight = w_gap + p.t() @ w_u
        bias = b_t + pred_bias.detach().double().cpu() @ w_u
        return weight.float().contiguous(), bias.float()

    @torch.jit.export
    def lean_count(self, unit: int, hidden: torch.Tensor) -> int:
        """The keep count (prefix order) or ``k_r`` (``u_r`` order) of ``unit`` from its first layer's output.

        ``hidden``: ``GAP @ W + b`` of :meth:`lean_tables`, before the committed MAC term.

        Not recorded: the caller charges the unit's final count with :meth:`record`.
        """
        if unit == 0:
            self._start()
        a = self.rest(torch.addcmul(hidden, self.wc[unit], self.fraction))  # (1, 1): searchsorted takes any shape
        return self.base_count[unit] + int(torch.searchsorted(self.thresholds[unit], a, right=True))

    @torch.jit.export
    def lean_counts(self, unit: int, hidden: torch.Tensor) -> torch.Tensor:
        """:meth:`lean_count` for a batch: the keep counts (prefix order) or ``k_r`` of ``unit``, int64 ``(N,)``.

        ``hidden``: ``GAP @ W + b`` of :meth:`lean_tables` for N images ``(N, H)``. Each image's committed MAC
        fraction is one row of the shared state (resized at unit 0); only for a source that is ``batchable``
        (folded first layer, fixed input widths). Not recorded: the caller charges each image's final count with
        :meth:`record_counts`.
        """
        if unit == 0:
            self.fraction.resize_(hidden.shape[0], 1).fill_(self.fixed / self.base_macs)
        a = self.rest(torch.addcmul(hidden, self.wc[unit], self.fraction))  # (N, 1)
        return torch.searchsorted(self.thresholds[unit], a.view(-1), right=True) + self.base_count[unit]

    @torch.jit.export
    def record_counts(self, unit: int, kept: torch.Tensor) -> None:
        """Charge each image of a batch with its ``kept[i]`` output channels of ``unit`` (after :meth:`lean_counts`)."""
        self.fraction.add_(self.steps[unit].index_select(0, kept).unsqueeze(1))

    def _output(self, unit: int, gap: torch.Tensor, u_r: torch.Tensor) -> torch.Tensor:
        """The actor's output ``(1, 1)`` for ``unit``: the mean before the prior (folded) or the clipped action."""
        if unit == 0:
            self._start()
        if self.fold:
            features = torch.cat([gap, u_r], 1).clamp(-self.bound, self.bound)
            hidden = torch.addmm(self.b1[unit], features, self.w1[unit])
            return self.rest(torch.addcmul(hidden, self.wc[unit], self.fraction))
        committed = float(self.committed[0]) / self.base_macs
        obs, finite = self.agent._observation(unit, gap, u_r, torch.full([1, 1], committed, device=gap.device))
        actions, h, c = self.agent.actor(obs, self.h, self.c)
        if self.recurrent:
            self.h.copy_(h)
            self.c.copy_(c)
        if not finite:
            raise RuntimeError("the model produced non-finite activations at the input of a unit; check its weights")
        return actions[:, :1]

    @torch.jit.export
    def ratio(self, unit: int, gap: torch.Tensor, u_r: torch.Tensor) -> float:
        """The keep ratio of ``unit`` for one image (GAP and ``u_r`` at their original widths)."""
        out = self._output(unit, gap, u_r)
        if self.fold:  # FusedActor's float32 clamp(mean + prior, low, high)
            actor = self.agent.actor
            out = torch.clamp(out + actor.prior[:, :1], actor.low[:1], actor.high[:1])
        return action_ratio(float(out[0, 0]), self.offset, self.min_keep, self.decimals)

    @torch.jit.export
    def prefix_keep(self, unit: int, gap: torch.Tensor, u_r: torch.Tensor) -> int:
        """The keep count of prefix-order ``unit`` for one image, already recorded (:meth:`record`).

        One ``searchsorted`` in the unit's threshold table replaces the ratio arithmetic; the same count as
        ``prefix_count(ratio(...))``.
        """
        a = self._output(unit, gap, u_r).view(1)
        n = self.base_count[unit] + int(torch.searchsorted(self.thresholds[unit], a, right=True))
        self.record(unit, n)
        return n

    @torch.jit.export
    def record(self, unit: int, kept: int) -> None:
        """Charge ``unit`` with its ``kept`` output channels (times its kept inputs)."""
        if self.fold and not self.track:
            self.fraction.add_(self.steps[unit][kept])
            return
        cin = self.in_channels[unit]
        if self.track:
            self.counts[unit] = kept
            p = self.producer[unit]
            if p >= 0:
                cin = int(self.counts[p])
        macs = (self.unit_coef[unit] * cin + self.consumer_coef[unit]) * kept
        if self.fold:  # a float32 sum of per-unit fractions (the eager source divides the exact integer sum once)
            self.fraction.add_(macs / self.base_macs)
        else:
            self.committed.add_(macs)

    def _start(self) -> None:
        """A new image: nothing committed but the fixed MACs, the LSTM state zero."""
        if self.fold:  # (after a batch: one row again)
            self.fraction.resize_(1, 1).fill_(self.fixed / self.base_macs)
        else:
            self.committed.fill_(self.fixed)
        if self.recurrent:
            self.h.zero_()
            self.c.zero_()

    def forward(self, unit: int, gap: torch.Tensor, u_r: torch.Tensor) -> float:  # noqa: D102
        return self.ratio(unit, gap, u_r)


class _TracedSource(nn.Module):
    """:class:`FusedRuntimeSource` as tensor operations for one image, to be traced (ONNX export).

    The committed MACs are int64 tensors built from the ``kept`` tensors recorded so far (reset per image), then
    divided by the base MACs in float64, as the Python bookkeeping does. A prefix-order unit's keep count is its
    threshold table (:func:`count_thresholds`) applied to the actor's output: ``base + sum(θ ≤ a)``, exact, with
    the first layer folded as in the folded TorchScript source; other units get the ratio, :func:`action_ratio` on
    tensors (``torch.round`` rounds half to even, as ``np.round`` does). Non-finite features cannot raise in a
    traced graph: the count is clamped into range and the logits are non-finite anyway.
    """

    def __init__(self, source: FusedRuntimeSource, fold: bool = True) -> None:
        super().__init__()
        self.tables = _ScriptedSource(source, fold)  # the folded first layer and the threshold tables
        self.agent = self.tables.agent
        self.fixed = self.tables.fixed
        self.base_macs = self.tables.base_macs
        self.unit_coef = list(self.tables.unit_coef)
        self.consumer_coef = list(self.tables.consumer_coef)
        self.producer = list(self.tables.producer)
        self.in_channels = list(self.tables.in_channels)
        self.offset = float(source.action_offset)
        self.min_keep = float(source.min_keep)
        self.scale = 10.0 ** int(RATIO_DECIMALS)
        self.lstm = source.lstm_shape
        # the lean path (the folded TorchScript source's): a folded first layer and fixed input widths, so each
        # unit's committed MAC fraction is a table lookup (float32, as there) and its first layer one product
        self.lean = bool(self.tables.fold and not self.tables.track)
        self.__dict__["_kept"] = []  # this image's kept counts, int64 (1,) each, in unit order
        self.__dict__["_state"] = None  # (committed MACs int64 (1,), h, c)
        self.__dict__["_fraction"] = None  # the lean path's committed MAC fraction, float32 (1, 1)

    def reset(self) -> None:
        """Start a new image (unit 0 next)."""
        z = torch.zeros(self.lstm[0], 1, self.lstm[1])
        self.__dict__["_kept"] = [None] * len(self.unit_coef)
        self.__dict__["_state"] = (torch.full((1,), self.fixed, dtype=torch.long), z, z)
        self.__dict__["_fraction"] = torch.full((1, 1), self.fixed / self.base_macs)

    def lean_tables(
        self,
        unit: int,
        pred_weight: torch.Tensor,
        pred_bias: torch.Tensor,
        in_positions: torch.Tensor,
        out_positions: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """:meth:`_ScriptedSource.lean_tables` where the lean path applies, else ``None``.

        With tables a unit calls :meth:`lean_prefix_keep` with ``GAP @ W + b`` instead of :meth:`prefix_keep` with
        the observation at the original widths.
        """
        if not self.lean:
            return None
        return self.tables.lean_tables(unit, pred_weight, pred_bias, in_positions, out_positions)

    def lean_prefix_keep(self, unit: int, hidden: torch.Tensor) -> torch.Tensor:
        """The keep count of prefix-order ``unit``, int64 ``(1,)``, from its first layer's output.

        ``hidden``: ``GAP @ W + b`` of :meth:`lean_tables`, before the committed MAC term. The count is charged to
        this image's committed fraction.
        """
        t = self.tables
        fraction = self.__dict__["_fraction"]
        count = self._count(unit, t.rest(torch.addcmul(hidden, t.wc[unit], fraction)))
        self.__dict__["_fraction"] = fraction + t.steps[unit].index_select(0, count).view(1, 1)
        return count

    def _count(self, unit: int, out: torch.Tensor) -> torch.Tensor:
        """Unit ``unit``'s threshold table applied to the actor's output ``out``: ``base + sum(θ ≤ out)``."""
        base, table = self.tables.base_count[unit], self.tables.thresholds[unit]
        if table.numel() == 0:
            return torch.full((1,), base, dtype=torch.long)
        return (table.view(1, -1) <= out).sum(1) + base

    def _output(self, unit: int, gap: torch.Tensor, u_r: torch.Tensor) -> torch.Tensor:
        """The actor's output ``(1, 1)``: the mean before the prior (folded) or the clipped action (exact)."""
        committed, h, c = self.__dict__["_state"]
        fraction = (committed.double() / self.base_macs).float().unsqueeze(1)
        t = self.tables
        if t.fold:
            features = torch.cat([gap, u_r], 1).clamp(-t.bound, t.bound)
            return t.rest(torch.addmm(t.b1[unit], features, t.w1[unit]) + fraction * t.wc[unit])
        actions, h, c = self.agent.actor(self.agent.features(unit, gap, u_r, fraction), h, c)
        self.__dict__["_state"] = (committed, h, c)
        return actions[:, :1]

    def ratio(self, unit: int, gap: torch.Tensor, u_r: torch.Tensor) -> torch.Tensor:
        """The keep ratio of ``unit``, float64 ``(1,)`` (GAP and ``u_r`` at their original widths)."""
        out = self._output(unit, gap, u_r)
        if self.tables.fold:
            actor = self.agent.actor
            out = torch.clamp(out + actor.prior[:, :1], actor.low[:1], actor.high[:1])
        a = (out[:, 0].double() + self.offset).clamp(-1.0, 1.0)
        r = self.min_keep + (a + 1.0) * 0.5 * (1.0 - self.min_keep)
        return (torch.round(r * self.scale) / self.scale).clamp(self.min_keep, 1.0)

    def prefix_keep(self, unit: int, gap: torch.Tensor, u_r: torch.Tensor) -> torch.Tensor:
        """The keep count of prefix-order ``unit``, int64 ``(1,)``, recorded (:meth:`record`)."""
        count = self._count(unit, self._output(unit, gap, u_r))
        self.record(unit, count)
        return count

    def record(self, unit: int, kept: torch.Tensor) -> None:
        """Charge ``unit`` with its ``kept`` output channels (times its kept inputs)."""
        counts = self.__dict__["_kept"]
        counts[unit] = kept
        p = self.producer[unit]
        cin = counts[p] if p >= 0 else self.in_channels[unit]
        committed, h, c = self.__dict__["_state"]
        self.__dict__["_state"] = (committed + (self.unit_coef[unit] * cin + self.consumer_coef[unit]) * kept, h, c)


def _non_finite(t: int) -> RuntimeError:
    return RuntimeError(f"the model produced non-finite activations at the input of unit {t}; check its weights")


def runtime_source(
    policy: Any,
    model: nn.Module,
    *,
    budget: float,
    min_keep: float = 0.1,
    deterministic: bool = True,
    action_offset: float = 0.0,
) -> PolicyRuntimeSource:
    """The fastest runtime source for ``policy``: fused when it converts, else ``predict`` with a warning.

    Args:
        policy: A trained agent or any policy with SB3's ``predict`` (baselines, user classes).
        model: The gated model the source prunes.
        budget: The MAC budget shown to the agent.
        min_keep: The env's smallest keep ratio. Default 0.1.
        deterministic: Deterministic actions (fused) or samples (always ``PolicyRuntimeSource``, no warning).
        action_offset: Added to every action before the ratio mapping. Default 0.

    Returns:
        A :class:`FusedRuntimeSource`, or a :class:`envs.runtime.PolicyRuntimeSource` (logged as a warning
        when the policy could not be fused).
    """
    if deterministic:
        try:
            return FusedRuntimeSource(policy, model, budget=budget, min_keep=min_keep, action_offset=action_offset)
        except NotFusableError as err:
            log.warning("the runtime agent runs through predict (slow at batch 1): %s", err)
    return PolicyRuntimeSource(
        policy, model, budget=budget, min_keep=min_keep, deterministic=deterministic, action_offset=action_offset
    )
