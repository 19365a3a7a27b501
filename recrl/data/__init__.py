"""Datasets: logged interactions and the built-in synthetic world."""
