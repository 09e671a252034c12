"""The snapshot side file (``<state>.json``): what Caffe's solver state forgets, and its check.

Caffe's SolverState does not say where the data layers were nor what the
random generator had drawn, so a resumed run would see other batches than an
uninterrupted one. The side file keeps both::

    {"iter": 40,                          # the iteration of its solver state
     "state_sha256": "9f...",             # the digest of that solver state file
     "rng": {...},                        # NumPy's PCG64 state, or null
     "train_net": {"data": {...}},        # layer name -> that layer's get_state()
     "test_nets": [{"data": {...}}],
     "ranks": [{"rng": ..., "train_net": ...}, ...]}   # data-parallel runs only: every rank's own

It is machine-written, so anything else in it means a damaged or foreign
file. ``check`` validates the structure against ``SCHEMA`` before anything
is restored, with a message that names the file and the offending entry.
Each layer's own state is checked by the layer's ``set_state`` (only it knows
what its numbers must be), under a guard in Solver.restore.

The schema is a few lines of explicit Python rather than a JSON Schema for
the ``jsonschema`` package: it is small, has one user, its errors must be our
own exception class, and the toolkit keeps no dependency it does not need.
"""
import json
import os
import re

from netspec.errors import SideFileError

SUFFIX = ".json"
INT32_MAX = 2 ** 31 - 1


def path_for(state_path):
    """Where the side file of a solver state lives."""
    return os.fspath(state_path) + SUFFIX


# -- a small schema language ----------------------------------------------------------
# A schema is a callable ``check(value, where)`` that raises ValueError("where: what").

def _fail(where, expected, value):
    shown = json.dumps(value)[:60] if _is_json(value) else repr(value)[:60]
    raise ValueError("%s: expected %s, found %s" % (where, expected, shown))


def _is_json(value):
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def Int(lo, hi):
    def check(value, where):
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            _fail(where, "an integer from %d to %d" % (lo, hi), value)
    return check


def Text(pattern=None, description="text"):
    regex = re.compile(pattern) if pattern else None

    def check(value, where):
        if not isinstance(value, str) or (regex is not None and not regex.fullmatch(value)):
            _fail(where, description, value)
    return check


def OneOf(*choices):
    def check(value, where):
        if isinstance(value, bool) or value not in choices:
            _fail(where, "one of %s" % ", ".join(json.dumps(c) for c in choices), value)
    return check


def Nullable(schema):
    def check(value, where):
        if value is not None:
            schema(value, where)
    return check


def ListOf(item):
    def check(value, where):
        if not isinstance(value, list):
            _fail(where, "a list", value)
        for i, v in enumerate(value):
            item(v, "%s[%d]" % (where, i))
    return check


def MapOf(item):
    """An object with any keys (names) whose values all fit ``item``."""
    def check(value, where):
        if not isinstance(value, dict):
            _fail(where, "an object", value)
        for k, v in value.items():
            item(v, "%s.%s" % (where, k))
    return check


def Record(required, optional=None):
    """An object with exactly these keys (``optional`` ones may be missing)."""
    optional = optional or {}

    def check(value, where):
        if not isinstance(value, dict):
            _fail(where, "an object", value)
        missing = [k for k in required if k not in value]
        if missing:
            raise ValueError("%s: the entry %r is missing" % (where, missing[0]))
        unknown = sorted(k for k in value if k not in required and k not in optional)
        if unknown:
            raise ValueError("%s: unknown entry %r" % (where, unknown[0]))
        for k, v in value.items():
            (required.get(k) or optional[k])(v, "%s.%s" % (where, k))
    return check


def AnyJSON(value, where):
    """A layer's own state: any JSON value (json.loads gives nothing else); its layer checks it."""


# -- the side file's schema ------------------------------------------------------------

RNG_STATE = Record({
    "bit_generator": OneOf("PCG64"),
    "state": Record({"state": Int(0, 2 ** 128 - 1), "inc": Int(0, 2 ** 128 - 1)}),
    "has_uint32": Int(0, 1),
    "uinteger": Int(0, 2 ** 32 - 1),
})

SCHEMA = Record(
    required={
        "iter": Int(0, INT32_MAX),
        "rng": Nullable(RNG_STATE),
        "train_net": MapOf(AnyJSON),
        "test_nets": ListOf(MapOf(AnyJSON)),
    },
    optional={"state_sha256": Text(r"[0-9a-f]{64}", "a SHA-256 digest in hex"),
              # solvers/data_parallel.py: each rank's data position and generator, rank 0 first
              "ranks": ListOf(Record({"rng": Nullable(RNG_STATE), "train_net": MapOf(AnyJSON)}))},
)


def check_rng_state(state, where):
    """Check a generator state (the side file's, or one inside a layer's) before NumPy sees it."""
    try:
        RNG_STATE(state, where)
    except ValueError as e:
        raise SideFileError(str(e)) from None


# -- reading and writing ----------------------------------------------------------------

def write(state_path, payload):
    """Write the side file of ``state_path`` atomically; return its path."""
    from netspec.io import atomic_write_bytes
    path = path_for(state_path)
    atomic_write_bytes(path, lambda: json.dumps(payload, sort_keys=True, default=_jsonable).encode("utf-8"))
    return path


def _jsonable(value):
    """NumPy scalars and arrays in a layer's state become plain JSON numbers and lists."""
    import numpy as np
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError("%s is not JSON serialisable; a layer's get_state() must return plain data"
                    % type(value).__name__)


def read(state_path):
    """The side file of ``state_path``, checked against SCHEMA; None when there is none.

    Raises SideFileError naming the file and what is wrong with it.
    """
    path = path_for(state_path)
    if not os.path.lexists(path):
        return None
    try:
        if not os.path.isfile(path):
            raise ValueError("it is not a regular file")
        with open(path, "rb") as f:
            payload = json.loads(f.read().decode("utf-8"))
        SCHEMA(payload, "side file")
    except OSError as e:
        raise SideFileError("side file %r of snapshot %r cannot be read: %s"
                            % (path, os.fspath(state_path), e.strerror or e)) from None
    except (ValueError, RecursionError) as e:   # bad UTF-8 and bad JSON are ValueErrors too
        raise SideFileError("side file %r of snapshot %r is damaged or not ours: %s"
                            % (path, os.fspath(state_path), e)) from None
    return payload
