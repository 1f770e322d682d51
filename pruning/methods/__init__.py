"""Pruning methods beyond slicing: compensation of pruned channels, knockoff-controlled scores, channel gating.

| function       | what it does                                                        | source                      |
|----------------|---------------------------------------------------------------------|-----------------------------|
| `merge_pruned` | Neuron Merging: folds each pruned channel into a similar kept one   | Kim et al., NeurIPS 2020    |
| `train_control_factors` | SCOP: knockoff-controlled channel scores `|γ|·(2β − 1)`  | Tang et al., NeurIPS 2020 |
| `channel_gate` | Channel Gating: per-activation gates on a base-path partial sum      | Hua et al., NeurIPS 2019    |
| `sparsity_train` | Polarization: BN scales pushed to 0 or 1; `threshold_plan` cuts | Zhuang et al., NeurIPS 2020 |
| `GRDA`         | gRDA optimizer (unstructured ℓ1); `zero_filter_plan`, `search_c`    | Chao et al., NeurIPS 2020   |
"""

from __future__ import annotations

from .channel_gating import CGConv, channel_gate
from .grda import GRDA, search_c, zero_filter_plan
from .neuron_merging import MergeReport, merge_pruned, merge_scales
from .polarization import search_lambda_t, sparsity_train, threshold_plan
from .scop import GaussianKnockoffs, train_control_factors
from .search import SearchResult

__all__ = [
    "CGConv",
    "GRDA",
    "GaussianKnockoffs",
    "MergeReport",
    "SearchResult",
    "channel_gate",
    "merge_pruned",
    "merge_scales",
    "search_c",
    "search_lambda_t",
    "sparsity_train",
    "threshold_plan",
    "train_control_factors",
    "zero_filter_plan",
]
