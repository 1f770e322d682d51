"""Everything about networks in PruneGym: models, prunable units, gating, accounting, export, data, training.

This package never imports ``envs`` or ``agents``.
"""
