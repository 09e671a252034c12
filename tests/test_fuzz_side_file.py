"""Property-based fuzzing of the snapshot side file: only the toolkit's errors escape.

A real side file (a Data layer over LMDB, momentum, a test net) is mutated:
a subtree replaced by arbitrary JSON, a key dropped or added, or the bytes
garbled. Restoring must then succeed or raise a CaffeError; with
``ignore_side_file`` it must always succeed; and a restored solver must go on
training (a bad value accepted at restore must not crash later).
Bounded to a few seconds; ``CAFFE_FUZZ_LONG=600`` runs each target for 600 s (tests/fuzzing.py).
"""
import json

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis (pip install hypothesis)")
from hypothesis import strategies as st  # noqa: E402

from netspec.errors import CaffeError  # noqa: E402
from solvers.solver import Solver  # noqa: E402

from fuzzing import fuzz_run  # noqa: E402
from helpers import digits_net, make_digits_lmdb  # noqa: E402

NET = digits_net(test_batch=5)

SOLVER = """net: "net.prototxt"
test_iter: 1
test_interval: 1000
test_initialization: false
base_lr: 0.01
momentum: 0.9
lr_policy: "fixed"
max_iter: 100
snapshot_prefix: "tiny"
random_seed: 3
"""

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                               max_size=4),
                    max_leaves=10)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz_side")
    make_digits_lmdb(d / "digits", n=30, seed=2)
    (d / "net.prototxt").write_text(NET)
    (d / "solver.prototxt").write_text(SOLVER)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(d)
        solver = Solver(str(d / "solver.prototxt"))
        solver.step(3)
        solver.test(0)
        model, state = solver.snapshot()
        side = json.loads((d / (state.split("/")[-1] + ".json")).read_text())
        yield d, solver, state, side


def _paths(value, prefix=()):
    """Every path (tuple of keys/indices) inside a JSON value, the root included."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def _mutate(side, data):
    side = json.loads(json.dumps(side))
    paths = list(_paths(side))
    path = data.draw(st.sampled_from(paths), label="path")
    how = data.draw(st.sampled_from(["replace", "delete", "add"]), label="how")
    if not path:
        return data.draw(JSON) if how == "replace" else side
    parent = side
    for key in path[:-1]:
        parent = parent[key]
    if how == "replace":
        parent[path[-1]] = data.draw(JSON, label="value")
    elif how == "delete":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[data.draw(st.text(max_size=6), label="key")] = data.draw(JSON, label="value")
    else:
        parent.append(data.draw(JSON, label="value"))
    return side


def _restore_and_train(setup, ignore):
    d, solver, state, _ = setup
    try:
        solver.restore(state, ignore_side_file=ignore)
    except CaffeError:
        if ignore:
            raise
        return
    solver.step(2)           # what was accepted must also run
    solver.test(0)


def test_mutated_side_file_gives_only_named_errors(setup, monkeypatch):
    d, solver, state, side = setup
    monkeypatch.chdir(d)

    def check(data):
        (d / (state + ".json")).write_text(json.dumps(_mutate(side, data)))
        _restore_and_train(setup, ignore=False)
        _restore_and_train(setup, ignore=True)
    fuzz_run(st.data(), check, 100, "side file, mutated JSON")


def test_garbled_side_file_bytes_give_only_named_errors(setup, monkeypatch):
    d, solver, state, side = setup
    monkeypatch.chdir(d)
    text = json.dumps(side).encode()

    def check(garble):
        cut, raw = garble
        (d / (state + ".json")).write_bytes(text[:cut] + raw + text[cut:])
        _restore_and_train(setup, ignore=False)
        _restore_and_train(setup, ignore=True)
    fuzz_run(st.tuples(st.integers(0, len(text)), st.binary(max_size=64)), check, 40,
             "side file, garbled bytes")
