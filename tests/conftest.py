"""Suite-wide settings: nothing here may depend on the machine's speed.

Hypothesis's defaults do: a 200 ms deadline per example and a health check
that fails tests whose data generation is "too slow", both measured in wall
time, so a busy machine fails them. The profile below turns both off for
every test; a test's own ``@settings`` still sets its example counts.
"""
from hypothesis import HealthCheck, settings

settings.register_profile("pagesim", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("pagesim")
