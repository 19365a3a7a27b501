"""Off-policy evaluation: what would a policy have earned on the logged users?

:mod:`recrl.ope.estimators` holds the estimators over arrays (per-step and per-session),
:mod:`recrl.ope.slate` the slate pseudo-inverse estimator (PI, PI-SN; additive rewards),
:mod:`recrl.ope.core` the :class:`~recrl.ope.core.Estimate`, input checks and the shared Poisson
bootstrap behind every CI.
"""
