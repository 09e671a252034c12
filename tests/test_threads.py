"""The BLAS thread policy (solvers/threads.py): free cores by default, overridable three ways."""
import os

import numpy  # noqa: F401  (loads the BLAS that threadpoolctl then sees)
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from netspec.errors import CaffeError
from solvers import cli, threads

NET = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" inner_product_param { num_output: 4 } }
"""


@pytest.fixture
def policy(monkeypatch):
    """A fresh policy state, no thread variables set; the limit in force is put back afterwards."""
    for var in (threads.ENV,) + threads.BLAS_ENVS:
        monkeypatch.delenv(var, raising=False)
    saved = dict(threads._state)
    before = [(i["internal_api"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]
    threads._state.update(limiter=None, threads=None, explicit=False)
    yield monkeypatch
    threads._state.update(saved)
    if before:
        threadpool_limits(limits=before[0][1], user_api="blas")


def blas_threads():
    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


@pytest.mark.parametrize("cores,load,want", [(2, 0.0, 2), (2, 1.2, 1), (2, 0.6, 1), (2, 0.4, 2),
                                             (8, 3.0, 5), (4, 9.0, 1)])
def test_free_cores_are_the_usable_ones_less_the_load(policy, cores, load, want):
    policy.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    policy.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    assert threads.free_cores() == want
    assert threads.default_threads() == want


def test_environment_variable_wins_over_free_cores_and_blas_variables_are_respected(policy):
    policy.setenv(threads.ENV, "3")
    assert threads.default_threads() == 3
    policy.setenv(threads.ENV, "none")
    with pytest.raises(CaffeError, match="CAFFE_NUM_THREADS.*>= 1"):
        threads.default_threads()
    policy.delenv(threads.ENV)
    policy.setenv("OPENBLAS_NUM_THREADS", "2")
    assert threads.default_threads() is None      # the user configured the BLAS: left alone
    assert threads.apply_default() is None


def test_set_num_threads_limits_the_blas_and_beats_the_default(policy):
    if not blas_threads():
        pytest.skip("NumPy here has no BLAS that threadpoolctl can see")
    assert threads.set_num_threads(1) == 1
    assert blas_threads() == {1}
    policy.setenv(threads.ENV, "2")
    assert threads.apply_default() == 1            # an explicit choice is not overridden
    with pytest.raises(CaffeError, match="set_num_threads.*>= 1"):
        threads.set_num_threads(0)


def test_caffe_facade_exposes_set_num_threads():
    import caffe
    assert caffe.set_num_threads is threads.set_num_threads


def test_cli_threads_flag(policy, tmp_path, capsys):
    (tmp_path / "net.prototxt").write_text(NET)
    rc = cli.main(["time", "--model", str(tmp_path / "net.prototxt"), "--iterations", "1", "--threads", "1"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "BLAS threads: 1" in err
    rc = cli.main(["time", "--model", str(tmp_path / "net.prototxt"), "--threads", "many"])
    err = capsys.readouterr().err
    assert rc == 1 and "--threads" in err and ">= 1" in err


def test_without_threadpoolctl_the_policy_warns_and_runs(policy, caplog):
    import builtins
    real_import = builtins.__import__

    def no_threadpoolctl(name, *args, **kwargs):
        if name == "threadpoolctl":
            raise ImportError("no module named threadpoolctl")
        return real_import(name, *args, **kwargs)
    policy.setattr(builtins, "__import__", no_threadpoolctl)
    policy.setenv(threads.ENV, "1")
    with caplog.at_level("WARNING", logger="caffe"):
        assert threads.apply_default() == 1
    assert "threadpoolctl is not installed" in caplog.text
    assert threads.apply_default() == 1    # tried once; no second warning needed
