"""Pruning methods that edit weights beyond slicing: data-free compensation of pruned channels.

| function       | what it does                                                        | source                      |
|----------------|---------------------------------------------------------------------|-----------------------------|
| `merge_pruned` | Neuron Merging: folds each pruned channel into a similar kept one   | Kim et al., NeurIPS 2020    |
"""

from __future__ import annotations

from .neuron_merging import MergeReport, merge_pruned, merge_scales

__all__ = ["MergeReport", "merge_pruned", "merge_scales"]
