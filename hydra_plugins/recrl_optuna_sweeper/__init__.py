"""Hydra plugin: recrl's Optuna sweeper (``hydra/sweeper=recrl_optuna``, chosen by ``search=<name>``)."""
