"""Bounds for the property-based fuzz tests: a few seconds in CI, long on request.

``CAFFE_FUZZ_LONG=1`` turns every fuzz target into a long run (about ten
minutes each on a 2-core machine) to look for what still escapes.
"""
import os

from hypothesis import HealthCheck, settings

LONG = os.environ.get("CAFFE_FUZZ_LONG", "") not in ("", "0")


def fuzz_settings(examples, long_examples=None):
    """Hypothesis settings: ``examples`` normally; many more with CAFFE_FUZZ_LONG=1."""
    return settings(max_examples=(long_examples or examples * 2000) if LONG else examples, deadline=None,
                    derandomize=not LONG, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
