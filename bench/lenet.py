#!/usr/bin/env python
"""LeNet speed at batch 64: this toolkit against PyTorch on the same CPU threads.

    python bench/lenet.py [--iterations 50] [--warmup 5] [--batch 64] [--profile]

The net is the seed's LeNet (golden ``lenet_auto_train.prototxt``) with its
Data layer replaced by Input layers of shape (B,1,28,28) and (B,), weights
from ``lenet_init.caffemodel``. Prints the median forward, backward and
forward-backward milliseconds per iteration and the peak RSS; when torch is
importable, the same net in PyTorch (same weights, same data, same thread
count; its loss is checked against ours) and the ratio ours / PyTorch.
``--profile`` adds the per-layer medians (which layer, forward or backward).
"""
import argparse
import os
import resource
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

GOLDEN_LENET = os.path.join(os.path.dirname(ROOT), "shared", "golden", "lenet")


def lenet_param(batch):
    """The golden LeNet train net, Data layer swapped for Input layers."""
    from netspec import caffe_pb2
    from netspec.io import read_net
    path = os.path.join(GOLDEN_LENET, "lenet_auto_train.prototxt")
    if not os.path.isfile(path):
        sys.exit("bench/lenet.py: %s not found; the benchmark uses the golden LeNet" % path)
    param = read_net(path)
    data = param.layer[0]
    data.ClearField("transform_param")
    data.ClearField("data_param")
    data.type = "Input"
    data.input_param.shape.add().dim.extend([batch, 1, 28, 28])
    data.input_param.shape.add().dim.extend([batch])
    param.state.phase = caffe_pb2.TRAIN
    return param


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB


def blas_threads():
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return os.cpu_count() or 1


def median_ms(samples):
    return statistics.median(samples) * 1e3


def bench_ours(images, labels, iterations, warmup, profile):
    from solvers.net import Net
    net = Net(lenet_param(images.shape[0]))
    weights = os.path.join(GOLDEN_LENET, "lenet_init.caffemodel")
    if os.path.isfile(weights):
        net.copy_from(weights)
    net.blobs["data"].data[...] = images
    net.blobs["label"].data[...] = labels
    last = len(net.layers) - 1
    fwd, bwd, loss = [], [], None
    per_layer_f = [[] for _ in net.layers]
    per_layer_b = [[] for _ in net.layers]
    clock = time.perf_counter
    for it in range(warmup + iterations):
        net.clear_param_diffs()
        t0 = clock()
        loss = net.forward_from_to(0, last)
        t1 = clock()
        net.backward_from_to(last, 0)
        t2 = clock()
        if it >= warmup:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    if profile:
        for _ in range(iterations):
            for i, (layer, bottom, top) in enumerate(zip(net.layers, net.bottom_vecs, net.top_vecs)):
                t = clock()
                layer.reshape(bottom, top)
                layer.forward(bottom, top)
                per_layer_f[i].append(clock() - t)
            net._set_loss_diffs()
            for i in range(last, -1, -1):
                if net.layer_need_backward[i]:
                    t = clock()
                    net.layers[i].backward(net.top_vecs[i], net.bottom_need_backward[i], net.bottom_vecs[i])
                    per_layer_b[i].append(clock() - t)
    fb = [f + b for f, b in zip(fwd, bwd)]
    result = {"forward": median_ms(fwd), "backward": median_ms(bwd), "forward_backward": median_ms(fb),
              "loss": float(loss), "rss": peak_rss_mib()}
    if profile:
        result["layers"] = [(name, median_ms(f), median_ms(b) if b else 0.0)
                            for name, f, b in zip(net.layer_names, per_layer_f, per_layer_b)]
    result["net"] = net
    return result


def bench_torch(net, images, labels, iterations, warmup, threads):
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    p = {name: [torch.tensor(np.array(b.data), requires_grad=True) for b in blobs]
         for name, blobs in net.params.items()}
    x = torch.from_numpy(np.array(images))
    y = torch.from_numpy(np.array(labels)).long()

    def forward():
        h = F.conv2d(x, *p["conv1"])
        h = F.max_pool2d(h, 2, 2)
        h = F.conv2d(h, *p["conv2"])
        h = F.max_pool2d(h, 2, 2)
        h = F.relu(F.linear(h.flatten(1), *p["fc1"]))
        h = F.linear(h, *p["score"])
        return F.cross_entropy(h, y)

    fwd, bwd, loss = [], [], None
    clock = time.perf_counter
    for it in range(warmup + iterations):
        for ts in p.values():
            for t in ts:
                t.grad = None
        t0 = clock()
        loss = forward()
        t1 = clock()
        loss.backward()
        t2 = clock()
        if it >= warmup:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    fb = [f + b for f, b in zip(fwd, bwd)]
    return {"forward": median_ms(fwd), "backward": median_ms(bwd), "forward_backward": median_ms(fb),
            "loss": loss.item(), "rss": peak_rss_mib(), "version": torch.__version__,
            "threads": torch.get_num_threads()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--profile", action="store_true", help="also print per-layer medians")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    images = rng.random((args.batch, 1, 28, 28), dtype=np.float32)
    labels = rng.integers(0, 10, args.batch).astype(np.float32)
    threads = blas_threads()
    print("LeNet, batch %d, %d iterations after %d warm-up (medians)" % (args.batch, args.iterations, args.warmup))
    print("numpy %s; BLAS threads %d; OPENBLAS_CORETYPE=%s" % (
        np.__version__, threads, os.environ.get("OPENBLAS_CORETYPE", "(unset)")))

    ours = bench_ours(images, labels, args.iterations, args.warmup, args.profile)
    row = "%-8s forward %8.2f ms  backward %8.2f ms  forward-backward %8.2f ms  peak RSS %7.1f MiB  loss %.6f"
    print(row % ("ours", ours["forward"], ours["backward"], ours["forward_backward"], ours["rss"], ours["loss"]))
    if args.profile:
        for name, f, b in ours["layers"]:
            print("    %-8s forward %7.2f ms  backward %7.2f ms" % (name, f, b))

    if args.no_torch:
        return 0
    try:
        import torch  # noqa: F401
    except ImportError:
        print("torch: not importable, no comparison (pip install torch to compare; it is never a dependency)")
        return 0
    theirs = bench_torch(ours["net"], images, labels, args.iterations, args.warmup, threads)
    print(row % ("pytorch", theirs["forward"], theirs["backward"], theirs["forward_backward"], theirs["rss"],
                 theirs["loss"]) + "  (torch %s, %d threads; RSS includes ours)" % (theirs["version"],
                                                                                  theirs["threads"]))
    if abs(theirs["loss"] - ours["loss"]) > 1e-4 * max(1.0, abs(theirs["loss"])):
        print("WARNING: the losses differ: ours %.6f, PyTorch %.6f" % (ours["loss"], theirs["loss"]))
    ratio = {k: ours[k] / theirs[k] for k in ("forward", "backward", "forward_backward")}
    print("ratio ours/pytorch: forward %.2fx  backward %.2fx  forward-backward %.2fx (target <= 1.5x)"
          % (ratio["forward"], ratio["backward"], ratio["forward_backward"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
