"""Metrics: offline ranking/prediction metrics, online episode statistics."""
