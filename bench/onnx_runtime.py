#!/usr/bin/env python3
"""ONNX Runtime's forward time beside this toolkit's, on the zoo nets and LeNet.

    python bench/onnx_runtime.py [CASE ...] [--repeat N] [--threads T]

Each net is exported (solvers.onnx_export) and both forwards run on the same
inputs in this one process, alternating, so the ratio is a peer figure
measured under the same load (the machine may be shared: read the ratio, not
the absolute times). Reports the median of --repeat runs after one warm-up,
and the largest relative difference of the outputs. The zoo nets need
../shared/golden/zoo (cases built once into a cache by tests/zoo_cases.py);
LeNet needs ../shared/golden/lenet.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402

from netspec.io import read_net  # noqa: E402
from solvers.onnx_export import deploy_net, net_to_onnx, rel_err  # noqa: E402

DEFAULT = ["lenet", "cifar10_quick_train", "squeezenet_v1.1", "mobilenet_v1", "bvlc_googlenet", "resnet50",
           "bvlc_alexnet", "vgg16"]


def load(case_id):
    """(deploy net, {input: values}) for a zoo case or 'lenet'."""
    if case_id == "lenet":
        golden = ROOT.parent / "shared" / "golden" / "lenet"
        net, _ = deploy_net(read_net(str(golden / "lenet_auto_test.prototxt")),
                            str(golden / "lenet_iter_500.caffemodel"), {"data": (64, 1, 28, 28)})
        rng = np.random.RandomState(0)
        return net, {"data": rng.uniform(0, 1, (64, 1, 28, 28)).astype(np.float32)}
    import zoo_cases
    prototxt, weights, inputs = zoo_cases.case_files(case_id)
    net, _ = deploy_net(read_net(str(prototxt)), str(weights))
    with np.load(str(inputs)) as feed:
        return net, {n: feed[n] for n in net.inputs}


def median_time(fn, repeat):
    fn()   # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="*", default=DEFAULT, help="zoo case ids or 'lenet' (default: %s)" % " ".join(DEFAULT))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    args = ap.parse_args(argv)
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    print("ONNX Runtime %s, %d CPUs; median of %d forwards after a warm-up, both in this process"
          % (ort.__version__, os.cpu_count(), args.repeat))
    print("%-22s %8s %12s %12s %8s %10s" % ("net", "batch", "toolkit ms", "onnxrt ms", "ratio", "rel diff"))
    for case_id in args.cases:
        try:
            net, values = load(case_id)
        except Exception as e:   # a missing golden folder: say so and go on
            print("%-22s skipped: %s" % (case_id, e))
            continue
        model = net_to_onnx(net)
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        for name, v in values.items():
            net.blobs[name].data[...] = v
        names = [o.name for o in sess.get_outputs()]
        ours_t = median_time(net.forward, args.repeat)
        theirs_t = median_time(lambda: sess.run(names, values), args.repeat)
        net.forward()
        got = sess.run(names, values)
        diff = max(rel_err(net.blobs[n].data, g) for n, g in zip(names, got))
        batch = next(iter(values.values())).shape[0]
        print("%-22s %8d %12.1f %12.1f %7.1fx %10.2g" % (case_id, batch, ours_t * 1e3, theirs_t * 1e3,
                                                         ours_t / theirs_t, diff), flush=True)
        del net, model
    print("ratio = toolkit time / ONNX Runtime time (above 1: ONNX Runtime is faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
