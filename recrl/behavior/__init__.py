"""Behavior (user) models learned from logged interactions."""
