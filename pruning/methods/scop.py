r"""SCOP (Tang et al., NeurIPS 2020): channel scores from knockoff features used as a scientific control.

**The idea.** A channel matters if the network prefers its features computed on the real image to the same
channel's features computed on a *knockoff* image: an input with the real images' statistics that carries no
information about the label beyond what the real image carries. SCOP puts a control factor ``β ∈ [0, 1]`` on
every channel and trains only the ``β`` on the real task while the real and the knockoff image go through the
network side by side. A channel whose ``β`` climbs to 1 is relied on; one that stays near 0.5 (or falls) could
as well be fed the knockoff. The channel score is ``|γ|·(β − (1 − β)) = |γ|·(2β − 1)`` with ``γ`` the BN scale
of the channel, and each unit drops its lowest-scored channels.

**Where and how it mixes** (``Kf_Conv2d`` of the released code). The batch is ``[X ; X̃]``.
At each controlled conv the output ``A`` (real half) and ``Ã`` (knockoff half) are mixed *after the conv and
before its BatchNorm*: the real stream continues with ``β⊙A + (1 − β)⊙Ã`` and the knockoff stream with ``Ã``
unchanged, so later layers see the knockoff stream's own features. The loss is the cross-entropy of the
real stream's logits only. BatchNorm runs in training mode on the doubled batch, as in the released code (its
running statistics change, but only in the internal copy: the pruned model is cut from the original
weights). Only the ``β`` are trained: Adam, lr 0.004, betas (0.5, 0.9), constant rate; after every step
``β`` is clamped to ``[0, 1]`` (init 0.5). Here the factors sit on the prunable units only (:mod:`pruning.units`:
``conv1`` of every ResNet block); the released code also puts them on every other conv but the stem, whose
``β`` it trains but never uses on CIFAR ResNets (their outputs are residual-coupled and not pruned).

**Knockoffs without a downloaded generator.** The paper draws ``X̃`` from a pretrained GAN. Here the default
is a *second-order Gaussian model-X knockoff* (Candès, Fan, Janson & Lv, JRSS-B 2018; Barber & Candès, AoS
2015) of each real image, :class:`GaussianKnockoffs`. The images (flattened, ``p = 3·32·32 = 3072``) are
modelled as ``N(μ, Σ)`` with a probabilistic-PCA covariance ``Σ = U diag(λ) Uᵀ + σ² I``: ``U`` the top
``rank`` principal directions (``p × r``, orthonormal), ``λ_k`` their variance in excess of the isotropic
residual ``σ²`` (the mean variance of the remaining ``p − r`` directions). The knockoff of ``x`` is drawn from

    X̃ | X = x  ~  N( x − D Σ⁻¹ (x − μ),  2D − D Σ⁻¹ D ),       D = diag(s) = s·I,

which makes ``(X, X̃)`` jointly Gaussian with ``cov(X̃) = Σ`` and ``cov(X, X̃) = Σ − D``: swapping any
coordinate of ``X`` with its knockoff leaves the first two moments unchanged. ``s`` is the *equicorrelated*
choice, one value for every coordinate, as large as the joint covariance allows: ``s = min(2·λ_min(Σ),
min_j Σ_jj) = min(2σ², min_j Σ_jj)`` (on a correlation matrix this is Barber & Candès' ``min(2λ_min, 1)``;
inputs normalised per channel have pixel variances near 1). Low rank + isotropic residual is what keeps
this cheap: ``Σ⁻¹`` follows from the Woodbury identity, the conditional covariance is again ``a·I + U
diag(b) Uᵀ``, and a draw costs ``O(p·r)`` per image instead of a ``3072 × 3072`` factorisation. When
``s = 2σ²`` (the case on CIFAR-10) the residual directions are reflected about the mean (``a = 0``); the
principal directions keep most of the image and get fresh noise. A smaller ``rank`` moves more of the variance into the
reflected residual (on the JPEG copy of CIFAR-10 the residual variance per pixel is ≈0.28 at rank 16, 0.19
at 32, 0.13 at 64, with total ≈0.98).

**Conditional or independent.** Model-X knockoffs keep what the principal directions explain: ``X̃`` shares
the real image's coarse structure and differs in the residual. On CIFAR-10 that is a weak control for a
convnet, because the channels that respond to coarse structure see almost the same features on both inputs,
get no signal for ``β``, and are pruned first: on the JPEG ResNet-20 at 0.7 of the MACs (no fine-tuning,
``epochs=0.2``, one uniform rate), keeping each unit's best channels by these scores gave 20.9 % test top-1,
against 29.2 % for random scores and 45.7 % for L1. The paper's GAN samples ``G(z)`` are instead drawn
independently of ``X`` (the same distribution, no shared content). ``conditional=False`` does that with the
same Gaussian, ``X̃ ~ N(μ, Σ)`` independent of ``X`` (so ``cov(X, X̃) = 0``: not a model-X knockoff, but the
paper's kind of control), which gave 53.0 % in the same setting. A check on data neither variant was tuned
on (ResNet-20 on CIFAR-10 at MAC budgets 0.5 and 0.25, the fair protocol's one epoch: 0.5 epoch of ``β``
training, one uniform rate, 0.5 epoch of fine-tune, distilled; seed 0) confirmed it: top-1 on the val split
83.38 % independent vs 80.28 % model-X at 0.5, and 68.48 % vs 59.88 % at 0.25 (test: 81.90 vs 78.56 and
68.57 vs 59.50). ``conditional=False`` (independent draws) is therefore the default of
:func:`train_control_factors` and of the ``scop`` baseline; :class:`GaussianKnockoffs` itself still defaults
to model-X knockoffs, the construction its name promises.

Any other sampler can be passed instead: a callable ``fn(x, generator) -> x̃`` (:data:`KnockoffSampler`),
e.g. a GAN that ignores ``x`` and draws its latent codes from ``generator``.

Example:
    >>> import torch
    >>> from pruning.data import get_dataset
    >>> from pruning.models import get_model
    >>> model = get_model("tiny_cnn")
    >>> data = get_dataset("synthetic", split="train", size=64)
    >>> result = train_control_factors(model, data, epochs=1, batch_size=32, rank=4)
    >>> [tuple(s.shape) for s in result.scores]
    [(8,), (16,), (16,)]
    >>> all(bool((b >= 0).all() and (b <= 1).all()) for b in result.beta)
    True
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..data import ImageDataset
from ..models import input_normalization
from ..train import OptimizerBuilder, TrainConfig, fractional_epochs, train
from ..units import get_units, unit_conv

__all__ = [
    "ControlledConv",
    "ControlFactors",
    "GaussianKnockoffs",
    "KnockoffNet",
    "KnockoffSampler",
    "scop_scores",
    "train_control_factors",
]

log = logging.getLogger(__name__)

#: ``fn(x, generator) -> x̃``: a knockoff batch of the shape of the real batch ``x``, drawing any randomness
#: from ``generator`` (a ``torch.Generator`` on ``x``'s device).
KnockoffSampler = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

#: The released code's optimiser for the control factors: Adam, lr 0.004, betas (0.5, 0.9), constant rate.
SCOP_LR = 0.004
SCOP_ADAM_BETAS = (0.5, 0.9)


class GaussianKnockoffs(nn.Module):
    """Second-order Gaussian model-X knockoffs on a PCA-rank-``r`` + isotropic-residual covariance.

    See the module docstring for the construction. Build one with :meth:`fit` (a tensor of samples) or
    :meth:`from_dataset` (training images, normalised as the model sees them); call it on a batch to get its
    knockoffs. All statistics are buffers, so ``.to(device)`` moves them.

    Args:
        mean: ``μ``, shape ``(p,)``.
        components: ``U``, orthonormal columns, shape ``(p, r)``.
        excess: ``λ``, the variance of each principal direction above ``σ²``, shape ``(r,)``, ``>= 0``.
        noise_var: ``σ² > 0``, the residual variance per direction.
        shape: Shape of one sample (e.g. ``(3, 32, 32)``); ``None`` means ``(p,)``.
        conditional: ``True`` (default): model-X knockoffs, drawn given each real sample. ``False``: independent
            draws from ``N(μ, Σ)`` (the real batch only sets the shape; see the module docstring).

    Attributes:
        s: The equicorrelated ``s`` (``D = s·I``), ``min(2σ², min_j Σ_jj)`` (used only when conditional).

    Raises:
        ValueError: inconsistent shapes, ``noise_var <= 0`` or negative ``excess``.
    """

    mean: torch.Tensor
    components: torch.Tensor
    excess: torch.Tensor

    def __init__(
        self,
        mean: torch.Tensor,
        components: torch.Tensor,
        excess: torch.Tensor,
        noise_var: float,
        *,
        shape: Sequence[int] | None = None,
        conditional: bool = True,
    ) -> None:
        super().__init__()
        self.conditional = bool(conditional)
        p = int(mean.numel())
        if mean.ndim != 1 or components.shape[0] != p or components.ndim != 2 or excess.shape != (components.shape[1],):
            raise ValueError(
                f"expected mean (p,), components (p, r) and excess (r,); got {tuple(mean.shape)}, "
                f"{tuple(components.shape)} and {tuple(excess.shape)}"
            )
        if not noise_var > 0:
            raise ValueError(
                f"noise_var (the residual variance σ²) must be positive, got {noise_var}: the data is (numerically) "
                "of rank <= r; fit with a lower rank"
            )
        if (excess < 0).any():
            raise ValueError("excess variances λ must be >= 0")
        self.shape = tuple(int(v) for v in shape) if shape is not None else (p,)
        if math.prod(self.shape) != p:
            raise ValueError(f"shape {self.shape} does not hold p = {p} values")
        self.register_buffer("mean", mean.detach().double().clone())
        self.register_buffer("components", components.detach().double().clone())
        self.register_buffer("excess", excess.detach().double().clone())
        self.noise_var = float(noise_var)
        diag = (self.components**2 @ self.excess) + self.noise_var  # Σ_jj
        self.s = float(min(2.0 * self.noise_var, float(diag.min())))

    @property
    def rank(self) -> int:
        """r, the number of principal directions."""
        return int(self.components.shape[1])

    @classmethod
    def fit(
        cls, samples: torch.Tensor, *, rank: int = 32, seed: int = 0, niter: int = 4, conditional: bool = True
    ) -> GaussianKnockoffs:
        """Fit ``μ``, the top ``rank`` principal directions and ``σ²`` to ``samples`` ``(N, *shape)``.

        The principal directions come from a randomized SVD of the centred samples (``torch.pca_lowrank``,
        seeded, global RNG untouched); ``σ² = (total variance − Σ_k e_k) / (p − r)`` with ``e_k`` the top
        eigenvalues of the sample covariance (the probabilistic-PCA maximum-likelihood residual), and
        ``λ_k = max(e_k − σ², 0)``.

        Args:
            samples: ``N`` samples of any shape (flattened to ``p`` values each), ``N > rank + 1``.
            rank: r, principal directions kept (``0 < r < p``). Default 32.
            seed: Seeds the randomized SVD.
            niter: Subspace iterations of the randomized SVD. Default 4.
            conditional: Model-X knockoffs (default) or independent draws (see the class).

        Raises:
            ValueError: ``rank`` out of range, too few samples, or data of rank ``<= r``.
        """
        x = samples.detach().double().flatten(1)
        n, p = x.shape
        if not 0 < rank < p:
            raise ValueError(f"rank must be in (0, p = {p}), got {rank}")
        if n <= rank + 1:
            raise ValueError(f"fitting rank {rank} needs more than {rank + 1} samples, got {n}")
        mean = x.mean(0)
        xc = x - mean
        total = float((xc**2).sum()) / (n - 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _, sing, v = torch.pca_lowrank(xc, q=min(rank + 8, n, p), center=False, niter=niter)
        eig = sing[:rank] ** 2 / (n - 1)
        noise_var = (total - float(eig.sum())) / (p - rank)
        excess = (eig - noise_var).clamp_min(0.0)
        return cls(mean, v[:, :rank], excess, noise_var, shape=samples.shape[1:], conditional=conditional)

    @classmethod
    def from_dataset(
        cls,
        dataset: ImageDataset,
        *,
        rank: int = 32,
        max_images: int = 10000,
        seed: int = 0,
        conditional: bool = True,
    ) -> GaussianKnockoffs:
        """Fit to (a seeded random subset of at most ``max_images`` of) a dataset's normalised images.

        Args:
            dataset: Training split, normalised as the model sees it (:func:`pruning.train.dataset_for_model`).
            rank: r. Default 32.
            max_images: Images used for the fit. Default 10000 (about 2 s on one CPU core for CIFAR).
            seed: Seeds the subset and the randomized SVD.
            conditional: Model-X knockoffs (default) or independent draws (see the class).
        """
        n = len(dataset)
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(n, max_images)]
        images = dataset.normalize(dataset.images[idx.sort().values])
        return cls.fit(images, rank=rank, seed=seed, conditional=conditional)

    def covariance(self) -> torch.Tensor:
        """The model covariance ``Σ = U diag(λ) Uᵀ + σ² I``, float64 ``(p, p)`` (for small ``p``: checks, tests)."""
        u = self.components
        return (u * self.excess) @ u.T + self.noise_var * torch.eye(u.shape[0], dtype=u.dtype, device=u.device)

    def _sigma_inv(self, z: torch.Tensor) -> torch.Tensor:
        """``Σ⁻¹ z`` for rows ``z`` ``(N, p)``, by Woodbury: ``(z − U diag(λ/(λ+σ²)) Uᵀ z) / σ²``."""
        u = self.components
        w = self.excess / (self.excess + self.noise_var)
        return (z - ((z @ u) * w) @ u.T) / self.noise_var

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw one knockoff per sample of ``x`` ``(N, *shape)`` (or, unconditional, one independent draw each).

        Args:
            x: Real samples.
            generator: Source of the Gaussian draws (on ``x``'s device); ``None`` uses torch's global RNG.
        """
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"knockoffs were fitted to samples of shape {self.shape}, got {tuple(x.shape[1:])}")
        z = x.detach().double().flatten(1) - self.mean
        s, sig2 = self.s, self.noise_var
        if self.conditional:
            cond_mean = z - s * self._sigma_inv(z)
            # conditional covariance 2sI − s²Σ⁻¹ = a·I + U diag(b) Uᵀ
            a = max(2.0 * s - s * s / sig2, 0.0)
            b = (s * s / sig2) * self.excess / (self.excess + sig2)
        else:  # X̃ ~ N(μ, Σ): covariance σ²·I + U diag(λ) Uᵀ
            cond_mean, a, b = torch.zeros_like(z), sig2, self.excess
        n1 = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        n2 = torch.randn((z.shape[0], self.rank), generator=generator, device=z.device, dtype=z.dtype)
        draw = cond_mean + math.sqrt(a) * n1 + (n2 * b.sqrt()) @ self.components.T
        return (draw + self.mean).to(x.dtype).reshape(x.shape)

    def describe(self) -> dict[str, Any]:
        """Plain values that say how the knockoffs are made (for reports)."""
        kind = "gaussian model-X, equicorrelated s" if self.conditional else "gaussian, independent of x"
        return {
            "knockoffs": f"{kind}, PCA rank r + isotropic residual",
            "knockoff_rank": self.rank,
            "knockoff_noise_var": self.noise_var,
            "knockoff_s": self.s,
        }

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"p={self.mean.numel()}, rank={self.rank}, noise_var={self.noise_var:.4g}, s={self.s:.4g}, "
            f"conditional={self.conditional}"
        )


class ControlledConv(nn.Module):
    """A unit's conv inside the knockoff stage: mixes real and knockoff features with control factors ``β``.

    The input batch is ``[real ; knockoff]`` (even size). With ``A``/``Ã`` the conv outputs of the two halves,
    the output is ``[β⊙A + (1 − β)⊙Ã ; Ã]`` (``β`` per output channel), which the unit's BatchNorm then
    normalises (released code: ``Kf_Conv2d``).

    Args:
        conv: The unit's conv (used as is, not copied).

    Attributes:
        beta: The control factors, shape ``(C_out,)``, initialised to 0.5.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self.beta = nn.Parameter(torch.full((conv.out_channels,), 0.5, device=conv.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        y = self.conv(x)
        if y.shape[0] % 2:
            raise ValueError(f"the knockoff stage needs a batch [real ; knockoff] of even size, got {y.shape[0]}")
        n = y.shape[0] // 2
        b = self.beta.view(1, -1, 1, 1)
        return torch.cat([b * y[:n] + (1 - b) * y[n:], y[n:]])


class KnockoffNet(nn.Module):
    """A copy of a model whose units carry control factors, run on real images and their knockoffs together.

    ``forward(x)`` draws ``x̃ = knockoffs(x, generator)`` (no gradient), runs the copy on ``[x ; x̃]`` and
    returns the real half's logits, so :func:`pruning.train.train` trains it like any classifier.

    Args:
        model: The model to score (a plain model with registered unit rules); it is deep-copied, not modified.
        knockoffs: The knockoff sampler (:class:`GaussianKnockoffs` or any :data:`KnockoffSampler`); an
            ``nn.Module`` sampler is registered as a submodule so it moves with the net.
        seed: Seeds the knockoff draws (one ``torch.Generator`` per device, created on first use).
    """

    def __init__(self, model: nn.Module, knockoffs: KnockoffSampler, *, seed: int = 0) -> None:
        super().__init__()
        self.model = copy.deepcopy(model)
        self.units = get_units(self.model)
        for u in self.units:
            parent, _, name = u.conv.rpartition(".")
            owner = self.model.get_submodule(parent) if parent else self.model
            setattr(owner, name, ControlledConv(unit_conv(self.model.get_submodule(u.conv))))
        self.knockoffs = knockoffs
        self.seed = int(seed)
        self._generators: dict[str, torch.Generator] = {}
        self.normalization = input_normalization(model)

    def controls(self) -> list[ControlledConv]:
        """The controlled convs, in unit order."""
        out = [self.model.get_submodule(u.conv) for u in self.units]
        assert all(isinstance(c, ControlledConv) for c in out)
        return out  # type: ignore[return-value]

    def control_factors(self) -> list[nn.Parameter]:
        """The ``β`` of every unit, in unit order (the only parameters SCOP trains)."""
        return [c.beta for c in self.controls()]

    def clamp_(self) -> None:
        """Clamp every ``β`` to ``[0, 1]`` in place (after each optimiser step, as the released code does)."""
        with torch.no_grad():
            for b in self.control_factors():
                b.clamp_(0.0, 1.0)

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        with torch.no_grad():
            xk = self.knockoffs(x, self._generator(x.device))
        if xk.shape != x.shape:
            raise ValueError(f"the knockoff sampler returned shape {tuple(xk.shape)} for a batch of {tuple(x.shape)}")
        return self.model(torch.cat([x, xk.to(x.dtype)]))[: x.shape[0]]


@dataclass
class ControlFactors:
    """What :func:`train_control_factors` returns.

    Attributes:
        beta: Per unit, the trained control factors ``β ∈ [0, 1]``, float ``(C,)``.
        scores: Per unit, the SCOP channel scores ``|γ|·(2β − 1)`` (higher = more important).
        info: How the knockoffs were made (:meth:`GaussianKnockoffs.describe`, or the sampler's name) and the
            training settings, as plain values.
        history: :func:`pruning.train.train`'s history of the β training.
    """

    beta: list[torch.Tensor]
    scores: list[torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)


def scop_scores(model: nn.Module, beta: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """SCOP's channel scores ``|γ|·(β − (1 − β))`` per unit, with ``γ`` the unit's BN scale.

    Args:
        model: The plain model the factors were trained on (its unit BNs supply ``γ``; non-affine BNs count
            as ``γ = 1``).
        beta: Per unit, the control factors ``(C,)``.

    Returns:
        Per unit, float ``(C,)`` on the CPU; higher = more important.

    Raises:
        ValueError: the number or sizes of ``beta`` do not match the model's units.
    """
    units = get_units(model)
    if len(beta) != len(units):
        raise ValueError(f"got control factors for {len(beta)} units, the model has {len(units)}")
    out = []
    for u, b in zip(units, beta, strict=True):
        bn = model.get_submodule(u.bn)
        gamma = bn.weight if isinstance(bn, nn.BatchNorm2d) and bn.affine else None
        b = b.detach().float().cpu()
        if b.shape != (u.out_channels,):
            raise ValueError(f"unit {u.index} ({u.conv}) has {u.out_channels} channels, got β of {tuple(b.shape)}")
        g = torch.ones_like(b) if gamma is None else gamma.detach().float().cpu().abs()
        out.append(g * (2.0 * b - 1.0))
    return out


def _adam_with_betas(betas: tuple[float, float]) -> OptimizerBuilder:
    def build(groups: list[dict[str, Any]], config: TrainConfig) -> torch.optim.Optimizer:
        return torch.optim.Adam(groups, lr=config.lr, betas=betas)

    return build


def train_control_factors(
    model: nn.Module,
    train_set: ImageDataset,
    *,
    knockoffs: KnockoffSampler | None = None,
    epochs: float = 1.0,
    batch_size: int = 128,
    lr: float = SCOP_LR,
    adam_betas: tuple[float, float] = SCOP_ADAM_BETAS,
    rank: int = 32,
    fit_images: int = 10000,
    conditional: bool = False,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> ControlFactors:
    """Train SCOP's control factors on a copy of ``model`` and score every unit's channels.

    Steps: fit :class:`GaussianKnockoffs` to the training images (unless ``knockoffs`` is given), wrap a copy
    of the model in a :class:`KnockoffNet`, train only the ``β`` with :func:`pruning.train.train` (standard
    augmentation of the real batch, knockoffs drawn from the augmented batch, cross-entropy of the real
    stream, Adam, constant rate, ``β`` clamped to [0, 1] after each step), then score with
    :func:`scop_scores`. The model's own weights and statistics are untouched.

    Args:
        model: A trained plain model (``ResNetCifar``, ``PlainConvNet``, ...). Not modified.
        train_set: Training split, normalised for the model (:func:`pruning.train.dataset_for_model`).
        knockoffs: A knockoff sampler; ``None`` (default) fits Gaussian knockoffs of rank ``rank`` to
            ``fit_images`` training images.
        epochs: Passes over ``train_set`` (fractions allowed: :func:`pruning.train.fractional_epochs`).
            The released code trains 20 epochs.
        batch_size: Real images per step (the forward pass sees twice as many). Default 128.
        lr: Adam learning rate. Default 0.004 (released code).
        adam_betas: Adam's betas. Default (0.5, 0.9) (released code).
        rank: PCA rank of the Gaussian knockoffs. Default 32.
        fit_images: Images the Gaussian model is fitted to. Default 10000.
        conditional: Gaussian model-X knockoffs, or independent draws from the same Gaussian (default: the
            paper's kind of control, and the better one measured; see the module docstring). Ignored when
            ``knockoffs`` is given.
        seed: Seeds the fit subset, the knockoff draws and the data order.
        device: Where to train.
        progress: Show a progress bar.

    Returns:
        The factors, the scores, a description of the knockoffs and the training history.

    Raises:
        ValueError: ``epochs`` is not a finite number ``>= 0``, or the knockoff fit fails (see
            :meth:`GaussianKnockoffs.fit`).
    """
    info: dict[str, Any]
    if knockoffs is None:
        sampler = GaussianKnockoffs.from_dataset(
            train_set, rank=rank, max_images=fit_images, seed=seed, conditional=conditional
        )
        info = sampler.describe()
        knockoffs = sampler
    else:
        info = {"knockoffs": getattr(knockoffs, "__name__", type(knockoffs).__name__)}
    data, whole = fractional_epochs(train_set, epochs, seed=seed)
    net = KnockoffNet(model, knockoffs, seed=seed)
    config = TrainConfig(
        epochs=whole, batch_size=batch_size, optimizer="adam", lr=lr, weight_decay=0.0, schedule="constant",
        seed=seed, device=device,
    )  # fmt: skip
    history: dict[str, Any] = {"epochs": [], "steps": 0}
    if whole > 0:
        history = train(
            net, data, config, params=net.control_factors(), progress=progress, desc="scop control factors",
            after_step=lambda m: net.clamp_(), make_optimizer=_adam_with_betas(adam_betas),
        )  # fmt: skip
    beta = [b.detach().cpu().clone() for b in net.control_factors()]
    info.update(epochs=float(epochs), lr=lr, adam_betas=list(adam_betas), batch_size=batch_size)
    log.info("scop: trained control factors for %d units over %g epoch(s)", len(beta), epochs)
    return ControlFactors(beta=beta, scores=scop_scores(model, beta), info=info, history=history)
