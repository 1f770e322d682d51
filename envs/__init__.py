"""Gymnasium environments of PruneGym."""
