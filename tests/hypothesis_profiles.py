"""Hypothesis profiles for the property-based tests, chosen by ``RESNET_XRAY_HYPOTHESIS``.

- ``ci`` (default): a few derandomised examples per property, so ``make test`` stays fast and repeatable.
- ``slow`` (alias ``thorough``): 500 examples per property, random seeds; run by hand with
  ``RESNET_XRAY_HYPOTHESIS=slow pytest -m slow tests/test_hypothesis_*.py`` (see docs/reliability.md).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("ci", max_examples=30, derandomize=True, **_COMMON)
settings.register_profile("slow", max_examples=500, **_COMMON)
settings.register_profile("thorough", max_examples=500, **_COMMON)
PROFILE = os.environ.get("RESNET_XRAY_HYPOTHESIS", "ci")
settings.load_profile(PROFILE)


def examples(ci: int, **kw) -> settings:
    """Per-test count: ``ci`` under the default profile (costly properties use fewer), the profile's own otherwise."""
    return settings(max_examples=ci, **kw) if PROFILE == "ci" else settings(**kw)
