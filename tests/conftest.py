"""Settings for the whole suite, loaded before any test module.

Hypothesis runs with one profile everywhere (a developer's run, `land`, CI), set here
once rather than test by test:

- ``deadline=None``: Hypothesis's per-example deadline (200 ms by default) is a timing
  assertion. On a shared two-core machine an example of a pure function can wait longer
  than that for a CPU and fail with nothing wrong. Speed is measured in bench/, never
  asserted (BRIEF "How we work").
- ``HealthCheck.too_slow`` suppressed for the same reason: it times data generation.
  The health checks that catch a wrong test (``filter_too_much``, ``data_too_large``,
  ``function_scoped_fixture``, ``differing_executors``, ...) stay on; a test that
  suppresses one deliberately says so in its own ``@settings``.
- ``print_blob``: a failure prints what ``@reproduce_failure`` needs to replay it.

A test's own ``@settings(max_examples=...)`` inherits the rest from this profile.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "mfaproxy",
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("mfaproxy")
