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


def long_seconds():
    """Seconds per target for ``fuzz_run`` in a long run: CAFFE_FUZZ_LONG=600 says ten minutes
    (any value of 10 or more is seconds); CAFFE_FUZZ_LONG=1 means the default, ten minutes."""
    try:
        value = float(os.environ.get("CAFFE_FUZZ_LONG", "0"))
    except ValueError:
        value = 0
    return value if value >= 10 else 600.0


def fuzz_run(strategy, check, examples, name="fuzz"):
    """Run ``check`` on examples drawn from ``strategy``.

    Normally ``examples`` fixed (derandomized) examples; with CAFFE_FUZZ_LONG,
    round after round of fresh random examples until ``long_seconds()`` have
    passed, then a line saying how many ran (shown with ``pytest -s``).
    """
    import time
    from hypothesis import given
    if not LONG:
        fuzz_settings(examples)(given(strategy)(check))()
        return
    count = [0]

    def counted(value):
        count[0] += 1
        check(value)
    start = time.monotonic()
    while time.monotonic() - start < long_seconds():
        settings(fuzz_settings(examples), max_examples=examples * 10)(given(strategy)(counted))()
    print("%s: %d examples in %.0f s, nothing escaped" % (name, count[0], time.monotonic() - start))
