"""Environments: the batched recommendation simulator."""
