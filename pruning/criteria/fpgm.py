"""Filter pruning via the geometric median (FPGM; He, Liu, Wang, Hu & Yang, CVPR 2019): Neuron Merging's "l2-GM".

FPGM prunes the filters that are most *replaceable*, not the smallest: the filters nearest the geometric median
of a layer's filters, whose information the others jointly carry. The geometric median ``x*`` of the filters
``w_1..w_C`` minimises ``Σ_j ‖x − w_j‖₂``; FPGM approximates "nearest ``x*``" by restricting ``x`` to the filters
themselves, so the score of filter ``c`` is

    g(c) = Σ_j ‖w_c − w_j‖₂,

the sum of its L2 distances to every filter of the unit (``j = c`` adds 0). A low score means the filter is
central (close to the geometric median, redundant): it is pruned first, which is the registry's convention
(higher = kept first). The authors' code (``he-y/filter-pruning-geometric-median``, ``get_filter_similar``) and
Neuron Merging's ``l2-GM`` criterion (``friendshipkim/neuron-merging``, ``decompose.py``) compute this sum with
the Euclidean distance between flattened filters.

Zeroed filters: unlike ``l1``/``l2``, a filter of zeros is *not* necessarily ranked lowest. Its score is
``Σ_j ‖w_j‖₂``, the distance from the origin to every other filter; it ranks lowest only if the origin is more
central than every filter. FPGM ranks by redundancy, not by magnitude.
"""

from __future__ import annotations

import torch
from torch import nn

from ..units import Unit, unit_conv

__all__ = ["l2_gm_criterion"]


def l2_gm_criterion(model: nn.Module, unit: Unit) -> torch.Tensor:
    """FPGM's score of each output filter: the sum of its L2 distances to the unit's filters (see the module).

    Registered as ``"l2_gm"``. Works on plain and gated models (it reads the unit's conv weights) and never
    modifies the model.

    Args:
        model: The model.
        unit: The unit to score.

    Returns:
        Scores ``(C_out,)``, float32 (computed in float64), non-negative; the filter nearest the geometric
        median of the unit's filters has the lowest score.
    """
    w = unit_conv(model.get_submodule(unit.conv)).weight.detach().double().flatten(1)
    return torch.cdist(w, w).sum(dim=1).float()
