"""Data-parallel training under mpirun (solvers/data_parallel.py), as a user runs it.

The promise: N ranks, each reading every N-th record, averaging their
gradients every iteration, train the same weights as one process with
``iter_size: N`` (Caffe's multi-GPU rule), to float32 summation order. The
single-process reference runs in this process; the MPI runs are
``mpirun -np N tools/solve.py train`` subprocesses on loopback, each bounded
by a timeout so a hung job fails the test instead of hanging CI.

Skipped (with the reason) where mpirun or mpi4py is missing; CI installs both.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import caffemodel_params, make_digits_lmdb

ROOT = Path(__file__).resolve().parents[1]
SOLVE = ROOT / "tools" / "solve.py"
MPIRUN = shutil.which("mpirun")

try:
    import mpi4py  # noqa: F401  (only its presence: the test process never joins MPI)
    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False


def needs_mpi(test):
    test = pytest.mark.skipif(MPIRUN is None, reason="mpirun not found (apt install openmpi-bin)")(test)
    return pytest.mark.skipif(not HAVE_MPI4PY, reason="mpi4py not installed (pip install '.[mpi]')")(test)


NET = """name: "dp"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 }
  data_param { source: "digits_lmdb" batch_size: 4 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 }
  data_param { source: "digits_lmdb" batch_size: 10 backend: LMDB } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" }
                      bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
%(extra)s
layer { name: "ip" type: "InnerProduct" bottom: "%(ip_bottom)s" top: "ip"
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy"
  include { phase: TEST } }
"""

SOLVER = """net: "net.prototxt"
test_iter: 2
test_interval: 10
base_lr: 0.1
momentum: 0.9
weight_decay: 0.0005
lr_policy: "inv"
gamma: 0.01
power: 0.75
display: 5
max_iter: %(max_iter)d
iter_size: %(iter_size)d
snapshot: %(snapshot)d
snapshot_prefix: "snap/%(name)s"
random_seed: 7
"""

RECORDS = 50     # not a multiple of 2, 3 or the records per iteration: the shares wrap unevenly


def write_job(tmp, extra="", ip_bottom="conv"):
    """The data, net and snapshot folder of a job in ``tmp``."""
    make_digits_lmdb(tmp / "digits_lmdb", n=RECORDS, seed=3)
    (tmp / "net.prototxt").write_text(NET % {"extra": extra, "ip_bottom": ip_bottom})
    (tmp / "snap").mkdir(exist_ok=True)


def solver_file(tmp, name, max_iter=20, iter_size=1, snapshot=0):
    path = tmp / ("%s.prototxt" % name)
    path.write_text(SOLVER % {"name": name, "max_iter": max_iter, "iter_size": iter_size,
                              "snapshot": snapshot})
    return path.name


def mpirun_command(n, args, extra_mpi=(), program=SOLVE):
    return ([MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", str(n), "--mca", "btl", "self,tcp",
             "--mca", "btl_tcp_if_include", "lo", *extra_mpi, sys.executable]
            + ([str(program)] if isinstance(program, (str, Path)) else list(program)) + list(args))


def mpi_env():
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def mpirun(n, args, cwd, timeout=150, extra_mpi=(), program=SOLVE):
    """Run an MPI job to its end; (exit status, stdout+stderr). A job past ``timeout`` fails the test."""
    try:
        res = subprocess.run(mpirun_command(n, args, extra_mpi, program), cwd=str(cwd), env=mpi_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail("mpirun -np %d %s did not end within %ds (hung?):\n%s"
                    % (n, " ".join(args), timeout, (e.output or b"").decode(errors="replace")[-3000:]))
    return res.returncode, res.stdout.decode(errors="replace")


def single_process(tmp, solver_name, log_name):
    """The reference: tools/solve.py's train in this process (one process, no MPI)."""
    from solvers import cli
    cwd = os.getcwd()
    os.chdir(str(tmp))
    try:
        assert cli.main(["train", "--solver", solver_name, "--log", log_name]) == 0
    finally:
        os.chdir(cwd)


def assert_params_close(actual, expected, rel):
    assert actual.keys() == expected.keys() and len(expected) == 4
    for key in expected:
        scale = float(np.abs(expected[key]).max())
        np.testing.assert_allclose(actual[key], expected[key], rtol=rel, atol=rel * scale,
                                   err_msg="layer %s blob %d" % key)


def relative_difference(a, b):
    return max(float(np.abs(a[k] - b[k]).max() / np.abs(b[k]).max()) for k in b)


LOSS_LINE = re.compile(r"\] Iteration (\d+) \(.*\), loss = (\S+)")


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_n_ranks_equal_iter_size_n(tmp_path, ranks):
    write_job(tmp_path)
    single_process(tmp_path, solver_file(tmp_path, "single", iter_size=ranks), "single.log")
    single_process(tmp_path, solver_file(tmp_path, "one", iter_size=1), "one.log")
    rc, out = mpirun(ranks, ["train", "--solver", solver_file(tmp_path, "mpi"), "--log", "mpi.log"],
                     tmp_path)
    assert rc == 0, out[-4000:]
    log_text = (tmp_path / "mpi.log").read_text()
    assert "Data-parallel training on %d processes" % ranks in log_text
    assert "effective batch %d (batch_size 4)" % (4 * ranks) in log_text
    # rank 0 alone logs and tests: one line each in the output of all ranks together
    assert out.count("] Iteration 15 (") == 1 and out.count("Iteration 10, Testing net (#0)") == 1

    mpi = caffemodel_params(tmp_path / "snap" / "mpi_iter_20.caffemodel")
    single = caffemodel_params(tmp_path / "snap" / "single_iter_20.caffemodel")
    one = caffemodel_params(tmp_path / "snap" / "one_iter_20.caffemodel")
    assert "mpi4py.MPI" not in sys.modules     # one process never starts MPI
    assert_params_close(mpi, single, 1e-5)
    # not vacuous: ranks reading the same records would train exactly the iter_size 1 weights
    assert relative_difference(mpi, one) > 1e-3
    # the loss logged is the average over the ranks, as the iter_size run logs its average
    mpi_losses = LOSS_LINE.findall(log_text)
    single_losses = LOSS_LINE.findall((tmp_path / "single.log").read_text())
    assert [i for i, _ in mpi_losses] == [i for i, _ in single_losses] == ["0", "5", "10", "15"]
    np.testing.assert_allclose([float(v) for _, v in mpi_losses], [float(v) for _, v in single_losses],
                               rtol=1e-5)


def test_train_records_are_shared_rank_strided(tmp_path):
    """Rank r of N reads records r, r+N, ... in key order (wrapping); TEST nets read every record.

    No MPI needed: the share is set as pycaffe's set_solver_count/rank would.
    """
    from solvers import data_parallel
    from solvers.net import Net
    n = 7
    make_digits_lmdb(tmp_path / "db", n=n, seed=0)
    (tmp_path / "n.prototxt").write_text(
        'name: "n" layer { name: "data" type: "Data" top: "data" top: "label" '
        'data_param { source: "%s" batch_size: 5 backend: LMDB prefetch: 0 } }' % (tmp_path / "db"))
    images = [r.reshape(-1) for r in records_in_key_order(tmp_path / "db")]
    assert len(images) == n and len({im.tobytes() for im in images}) == n

    def batch(phase, rank, count):
        data_parallel.set_solver_count(count)
        data_parallel.set_solver_rank(rank)
        try:
            net = Net(str(tmp_path / "n.prototxt"), phase=phase)
            net.forward()
            return [row for row in net.blobs["data"].data.reshape(5, -1)]
        finally:
            data_parallel.set_multiprocess(False)

    for rank in range(3):
        wanted = [images[(rank + 3 * k) % n] for k in range(5)]
        np.testing.assert_array_equal(batch("TRAIN", rank, 3), wanted)
    np.testing.assert_array_equal(batch("TEST", 1, 3), images[:5])


@pytest.mark.parametrize("shuffle", [False, True])
def test_hdf5_rows_are_shared_rank_strided_across_files(tmp_path, shuffle):
    """HDF5Data as Caffe 1.0 shares it: rank r takes the rows at overall positions r, r+N, ...
    of the sequence one process reads (files in turn, shuffled alike on every rank)."""
    h5py = pytest.importorskip("h5py")
    from solvers import data_parallel, rng
    from solvers.net import Net
    names = []
    for i, rows in enumerate((4, 3)):
        name = str(tmp_path / ("part%d.h5" % i))
        with h5py.File(name, "w") as f:
            f["data"] = np.arange(10 * i, 10 * i + rows, dtype=np.float32).reshape(rows, 1)
        names.append(name)
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")
    (tmp_path / "n.prototxt").write_text(
        'name: "n" layer { name: "h5" type: "HDF5Data" top: "data" hdf5_data_param { source: "%s" '
        'batch_size: 3 shuffle: %s } }' % (tmp_path / "list.txt", "true" if shuffle else "false"))

    def values(rank, count, batches):
        data_parallel.set_solver_count(count)
        data_parallel.set_solver_rank(rank)
        rng.set_random_seed(11)
        try:
            net = Net(str(tmp_path / "n.prototxt"), phase="TRAIN")
            out = []
            for _ in range(batches):
                net.forward()
                out += net.blobs["data"].data.ravel().tolist()
            return out
        finally:
            data_parallel.set_multiprocess(False)

    sequence = values(0, 1, 12)           # 36 rows: five passes over the 7, wrapping
    for rank in range(3):
        assert values(rank, 3, 4) == sequence[rank::3][:12]


def records_in_key_order(path):
    from solvers.data.datum import parse_datum
    from solvers.data.lmdb_source import LMDBReader
    reader = LMDBReader.open(str(path))
    try:
        return [np.frombuffer(parse_datum(v, "record").data, np.uint8).astype(np.float32)
                for _, v in reader.items()]
    finally:
        reader.release()


@needs_mpi
def test_resume_restores_every_rank(tmp_path):
    write_job(tmp_path)
    rc, out = mpirun(2, ["train", "--solver", solver_file(tmp_path, "a", snapshot=10)], tmp_path)
    assert rc == 0, out[-4000:]
    side = (tmp_path / "snap" / "a_iter_10.solverstate.json").read_text()
    assert '"ranks"' in side
    # resumed by the `caffe` command, in Caffe's spelling of the flags
    rc, out = mpirun(2, ["train", "-solver", solver_file(tmp_path, "b", snapshot=10),
                         "-snapshot", "snap/a_iter_10.solverstate"], tmp_path,
                     program=["-m", "solvers.caffe_tool"])
    assert rc == 0, out[-4000:]
    assert "Resuming from snap/a_iter_10.solverstate" in out
    resumed = caffemodel_params(tmp_path / "snap" / "b_iter_20.caffemodel")
    straight = caffemodel_params(tmp_path / "snap" / "a_iter_20.caffemodel")
    assert resumed.keys() == straight.keys()
    for key in straight:
        np.testing.assert_array_equal(resumed[key], straight[key], err_msg="layer %s blob %d" % key)
    # with another number of processes the positions cannot be mapped: said, and training goes on
    rc, out = mpirun(3, ["train", "--solver", solver_file(tmp_path, "c", snapshot=10),
                         "--snapshot", "snap/a_iter_10.solverstate"], tmp_path)
    assert rc == 0, out[-4000:]
    assert "was written by 2 processes, this run has 3" in out
    assert (tmp_path / "snap" / "c_iter_20.caffemodel").is_file()


@needs_mpi
def test_a_nan_loss_stops_every_rank_with_one_snapshot_and_one_message(tmp_path):
    write_job(tmp_path)
    name = solver_file(tmp_path, "nan", max_iter=1000)
    path = tmp_path / name
    path.write_text(path.read_text().replace("base_lr: 0.1", "base_lr: 1e30"))
    rc, out = mpirun(2, ["train", "--solver", name], tmp_path)
    assert rc != 0
    assert out.count("training stopped: the loss is") == 1, out[-3000:]
    assert "MPI_ABORT" not in out and "Traceback" not in out
    assert len(list((tmp_path / "snap").glob("nan_iter_*.caffemodel"))) == 1


@needs_mpi
def test_sigint_to_mpirun_snapshots_once_and_stops_all(tmp_path):
    write_job(tmp_path)
    args = ["train", "--solver", solver_file(tmp_path, "s", max_iter=100000), "--log", "s.log"]
    # On Ctrl-C mpirun stops forwarding output, sends SIGTERM odls_base_sigkill_timeout seconds
    # later (1 by default) and SIGKILL as long after: 3 leaves a loaded machine time to snapshot.
    with open(tmp_path / "s.out", "wb") as out_file:
        proc = subprocess.Popen(mpirun_command(2, args, ["--mca", "odls_base_sigkill_timeout", "3"]),
                                cwd=str(tmp_path), env=mpi_env(), stdout=out_file, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            log_path = tmp_path / "s.log"
            while not (log_path.exists() and re.search(r"\] Iteration 10 \(", log_path.read_text())):
                assert proc.poll() is None, (tmp_path / "s.out").read_text()[-3000:]
                assert time.monotonic() < deadline, "the log never showed iteration 10"
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    out = (tmp_path / "s.out").read_text()
    text = log_path.read_text()
    assert "SIGTERM received" in text and "Optimization stopped early." in text, out[-3000:]
    models = sorted(p.name for p in (tmp_path / "snap").glob("s_iter_*.caffemodel"))
    assert len(models) == 1, models                     # once, by rank 0
    assert text.count("Snapshotting to binary proto file") == 1
    stop = int(re.search(r"s_iter_(\d+)", models[0]).group(1))
    assert stop > 10 and (tmp_path / "snap" / ("s_iter_%d.solverstate.json" % stop)).is_file()


FAILING_LAYER = '''
from solvers.data_parallel import solver_rank
from solvers.layers.python_layer import PythonLayer


class FailOnRankOne(PythonLayer):
    """Passes its bottom through; on rank 1, raises at the 4th forward."""

    def setup(self, bottom, top):
        self.calls = 0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        self.calls += 1
        if solver_rank() == 1 and self.calls == 4:
            raise RuntimeError("the disk of rank one is on fire")
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = top[0].diff
'''


@needs_mpi
def test_a_failing_rank_ends_the_job_with_its_name(tmp_path):
    write_job(tmp_path, extra='layer { name: "fail" type: "Python" bottom: "conv" top: "fail" '
                              'python_param { module: "fail_layer" layer: "FailOnRankOne" } }',
              ip_bottom="fail")
    (tmp_path / "fail_layer.py").write_text(FAILING_LAYER)
    start = time.monotonic()
    rc, out = mpirun(2, ["train", "--solver", solver_file(tmp_path, "f", max_iter=100000)], tmp_path,
                     timeout=120)
    assert rc != 0
    assert re.search(r"rank 1 on \S+: .*the disk of rank one is on fire", out), out[-3000:]
    assert "Traceback" not in out
    assert time.monotonic() - start < 120


@needs_mpi
def test_preflight_names_the_rank_that_lacks_the_data(tmp_path):
    """Rank 1 runs in a folder without the LMDB (another host, as it sees the paths): nobody trains."""
    write_job(tmp_path)
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "snap").mkdir()
    shutil.copy(tmp_path / "net.prototxt", other / "net.prototxt")
    name = solver_file(tmp_path, "p")
    shutil.copy(tmp_path / name, other / name)
    base = mpirun_command(1, ["train", "--solver", name])
    app = base[base.index("-np"):]
    cmd = base[:base.index("-np")] + ["--wdir", str(tmp_path)] + app + [":", "--wdir", str(other)] + app
    res = subprocess.run(cmd, cwd=str(tmp_path), env=mpi_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, timeout=120)
    out = res.stdout.decode(errors="replace")
    assert res.returncode != 0
    assert re.search(r"failed on 1 of 2 processes", out), out[-3000:]
    assert re.search(r"rank 1 on \S+: layer 'data' .*digits_lmdb.* not found", out), out[-3000:]
    assert "Iteration 0" not in out and "Traceback" not in out


def test_mpirun_without_mpi4py_says_how_to_install_it(tmp_path):
    """Started as 2 processes but mpi4py cannot be imported: one clear line, status 1, no traceback."""
    code = ("import sys; sys.modules['mpi4py'] = None; sys.path.insert(0, %r); "
            "from solvers.cli import main; sys.exit(main(['train', '--solver', 'x.prototxt']))" % str(ROOT))
    res = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), capture_output=True, text=True,
                         env=dict(os.environ, OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_RANK="0"),
                         timeout=60)
    assert res.returncode == 1
    assert "started as 2 processes" in res.stderr and "pip install 'caffe-toolkit[mpi]'" in res.stderr
    assert "Traceback" not in res.stderr


@needs_mpi
def test_pycaffe_set_multiprocess_joins_the_mpi_job(tmp_path):
    code = ("import caffe; caffe.set_multiprocess(True); "
            "print('rank %d of %d' % (caffe.solver_rank(), caffe.solver_count()), flush=True)")
    (tmp_path / "join.py").write_text(code)
    rc, out = mpirun(2, [], tmp_path, program=tmp_path / "join.py", timeout=60)
    assert rc == 0, out[-3000:]
    assert "rank 0 of 2" in out and "rank 1 of 2" in out


def test_ranks_on_one_host_share_its_free_cores(monkeypatch):
    """Without a BLAS setting each process takes the free cores: mpirun's ranks divide them."""
    from solvers import threads
    for var in (threads.ENV,) + threads.BLAS_ENVS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(threads, "free_cores", lambda: 8)
    monkeypatch.delenv("OMPI_COMM_WORLD_LOCAL_SIZE", raising=False)
    assert threads.default_threads() == 8
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "3")
    assert threads.default_threads() == 2
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "16")
    assert threads.default_threads() == 1
