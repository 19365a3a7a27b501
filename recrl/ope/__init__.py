"""Off-policy evaluation: what would a policy have earned on the logged users?

- :mod:`recrl.ope.core`: the :class:`~recrl.ope.core.Estimate`, input checks and the shared
  Poisson bootstrap behind every CI;
- :mod:`recrl.ope.estimators`: per-step and per-session estimators over arrays;
- :mod:`recrl.ope.slate`: the slate pseudo-inverse estimator (PI, PI-SN; additive rewards);
- :mod:`recrl.ope.propensity`: a logging-policy model where logs lack propensities, its
  calibration and the per-row propensities;
- :mod:`recrl.ope.sessions`, :mod:`recrl.ope.target`: logged sessions as policy observations,
  the target's probabilities and the behavior model's values at each logged row;
- :mod:`recrl.ope.evaluation`: the report's off-policy section, ``recrl eval ope`` and
  ``trainer.select_by=ope``.
"""
