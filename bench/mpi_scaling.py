#!/usr/bin/env python
"""Data-parallel training speed: 1 process beside 2 MPI processes, 1 BLAS thread each.

    python bench/mpi_scaling.py [--iterations 30] [--warmup 5] [--nets lenet,cifar10_quick]

For LeNet (the golden ``lenet_auto_train.prototxt`` on the golden MNIST LMDB,
batch 64) and the zoo's ``cifar10_quick`` (Caffe's prototxt, batch 100, on a
synthetic 3x32x32 LMDB: speed does not depend on the pixels) it trains
``--iterations`` SGD iterations after ``--warmup``, first in one process
(the reference, measured in the same run), then as ``mpirun -np 2`` (each
rank its own batch, gradients averaged: twice the images per iteration).
It prints training images per second, the ratio to the single process, and
the time per iteration spent in the fused allreduce: on rank 0, the least
over the ranks (the rest of it is waiting for the slower rank), and the same
allreduce timed alone after a barrier (the transfer's own cost).

Every process runs with OPENBLAS_NUM_THREADS=OMP_NUM_THREADS=1, so 2
processes use 2 cores. On a shared machine the figures are noisy: compare the
ratio, not the absolute numbers. On two machines the same worker runs under
``mpirun --hostfile hosts -np 2 --mca btl_tcp_if_include eth0`` (see the
README's "Several processes or machines"); the allreduce then crosses the
network: LeNet's 431k parameters are 1.7 MB per iteration each way.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SHARED = os.path.join(os.path.dirname(ROOT), "shared", "golden")
LENET = os.path.join(SHARED, "lenet", "lenet_auto_train.prototxt")
MNIST_LMDB = os.path.join(SHARED, "lenet", "mnist_train_lmdb")
CIFAR = os.path.join(SHARED, "zoo", "prototxt", "cifar10_quick_train.prototxt")
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# -- the worker: one process, or one rank of an MPI job ------------------------------------

def train_net_param(net, source):
    """The net's TRAIN phase with its Data layer reading ``source`` (no mean file, no test nets)."""
    from netspec import caffe_pb2
    from netspec.io import read_net
    param = read_net(LENET if net == "lenet" else CIFAR)
    keep = []
    for layer in param.layer:
        if any(rule.phase == caffe_pb2.TEST for rule in layer.include):
            continue
        if layer.type == "Data":
            layer.data_param.source = source
            layer.data_param.backend = caffe_pb2.DataParameter.LMDB
            layer.transform_param.ClearField("mean_file")
            layer.ClearField("include")
        keep.append(layer)
    del param.layer[:]
    param.layer.extend(keep)
    return param


def worker(args):
    from netspec import caffe_pb2
    from solvers import data_parallel
    from solvers.sgd_solvers import get_solver
    parallel = data_parallel.launched_size() > 1
    if parallel:
        data_parallel.set_multiprocess()
    solver_param = caffe_pb2.SolverParameter(base_lr=0.001, momentum=0.9, weight_decay=0.0005,
                                             lr_policy="fixed", max_iter=10 ** 6, random_seed=1,
                                             snapshot_after_train=False)
    solver_param.net_param.CopyFrom(train_net_param(args.worker, args.source))
    solver = (data_parallel.get_solver if parallel else get_solver)(solver_param)
    batch = [l.layer_param.data_param.batch_size for l in solver.net.layers if l.type == "Data"][0]
    solver.step(args.warmup)
    comm = data_parallel.communicator()
    if parallel:
        solver.allreduce_seconds = 0.0
        comm.Barrier()
    start = time.perf_counter()
    solver.step(args.iterations)
    if parallel:
        comm.Barrier()
    seconds = time.perf_counter() - start
    size = data_parallel.solver_count()
    reduce_ms = [1000.0 * solver.allreduce_seconds / args.iterations] if parallel else [0.0]
    alone_ms = 0.0
    if parallel:
        reduce_ms = comm.allgather(reduce_ms[0])
        alone_ms = allreduce_alone_ms(comm, solver._buffer.copy())
    if data_parallel.solver_rank() == 0:
        print(json.dumps({"processes": size, "images_per_s": batch * size * args.iterations / seconds,
                          "iteration_ms": 1000.0 * seconds / args.iterations, "batch": batch,
                          "allreduce_ms_rank0": reduce_ms[0], "allreduce_ms_least": min(reduce_ms),
                          "allreduce_ms_alone": alone_ms,
                          "parameters": sum(b.count for b in solver.net.learnable_params)}), flush=True)


def allreduce_alone_ms(comm, buffer, repeats=20):
    """The same fused allreduce with nothing else to do (each after a barrier): the transfer's cost."""
    from mpi4py import MPI
    total = 0.0
    for _ in range(repeats):
        comm.Barrier()
        start = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        total += time.perf_counter() - start
    return 1000.0 * max(comm.allgather(total)) / repeats


# -- the driver ------------------------------------------------------------------------------

def synthetic_cifar_lmdb(path, n=1000):
    import numpy as np
    from solvers.data.datum import array_to_datum
    from solvers.data.lmdb_source import LMDBWriter
    rng = np.random.default_rng(0)
    with LMDBWriter(path, overwrite=True) as db:
        for i in range(n):
            datum = array_to_datum(rng.integers(0, 256, (3, 32, 32), dtype=np.uint8), int(rng.integers(10)))
            db.put(b"%08d" % i, datum.SerializeToString())


def run_worker(net, source, processes, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", net, "--source", source,
           "--iterations", str(args.iterations), "--warmup", str(args.warmup)]
    env = dict(os.environ, **ONE_THREAD)
    if processes > 1:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        cmd = [shutil.which("mpirun"), "--oversubscribe", "-np", str(processes), "--bind-to", "none"] + cmd
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    lines = [l for l in res.stdout.splitlines() if l.startswith("{")]
    if res.returncode != 0 or not lines:
        sys.exit("bench/mpi_scaling.py: %s failed (status %d):\n%s"
                 % (" ".join(cmd[:6]), res.returncode, (res.stdout + res.stderr)[-3000:]))
    return json.loads(lines[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--nets", default="lenet,cifar10_quick")
    ap.add_argument("--timeout", type=int, default=900, help="seconds allowed for each run")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--source", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    for path in (LENET, MNIST_LMDB, CIFAR):
        if not os.path.exists(path):
            sys.exit("bench/mpi_scaling.py: %s not found; the benchmark uses ../shared/golden" % path)
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        sys.exit("bench/mpi_scaling.py: mpi4py is not installed (pip install '.[mpi]')")
    if shutil.which("mpirun") is None:
        sys.exit("bench/mpi_scaling.py: mpirun not found (apt install openmpi-bin)")
    print("%d iterations after %d of warm-up; 1 BLAS thread per process; %d CPU cores on this machine "
          "(shared: compare ratios)" % (args.iterations, args.warmup, os.cpu_count() or 1))
    print("%-14s %5s %9s %10s %9s %8s   %s" % ("net", "procs", "batch", "images/s", "ratio", "iter ms",
                                             "allreduce ms/iter"))
    tmp = tempfile.mkdtemp(prefix="mpi_scaling.")
    try:
        for net in args.nets.split(","):
            if net == "lenet":
                source = MNIST_LMDB
            elif net == "cifar10_quick":
                source = os.path.join(tmp, "cifar_lmdb")
                if not os.path.exists(source):
                    synthetic_cifar_lmdb(source)
            else:
                sys.exit("bench/mpi_scaling.py: --nets knows lenet and cifar10_quick, not %r" % net)
            one = run_worker(net, source, 1, args)
            two = run_worker(net, source, 2, args)
            for r in (one, two):
                reduce = ("-" if r["processes"] == 1 else "%.2f (least %.2f, alone %.2f)"
                          % (r["allreduce_ms_rank0"], r["allreduce_ms_least"], r["allreduce_ms_alone"]))
                print("%-14s %5d %4d x %-3d %10.1f %9.2f %8.1f   %s"
                      % (net, r["processes"], r["processes"], r["batch"], r["images_per_s"],
                         r["images_per_s"] / one["images_per_s"], r["iteration_ms"], reduce))
            print("%-14s %d parameters: %.1f MB summed per iteration" % ("", two["parameters"],
                                                                         4e-6 * two["parameters"]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
