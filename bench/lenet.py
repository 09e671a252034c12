#!/usr/bin/env python
"""LeNet speed at batch 64: this toolkit against PyTorch on the same CPU threads.

    python bench/lenet.py [--iterations 50] [--warmup 5] [--batch 64] [--profile]
    python bench/lenet.py --load [--load-wait 60]     # beside a one-core CPU hog

The net is the seed's LeNet (golden ``lenet_auto_train.prototxt``) with its
Data layer replaced by Input layers of shape (B,1,28,28) and (B,), weights
from ``lenet_init.caffemodel``. Prints the median forward, backward and
forward-backward milliseconds per iteration and the peak RSS; when torch is
importable, the same net in PyTorch (same weights, same data, same thread
count; its loss is checked against ours) and the ratio ours / PyTorch.
``--profile`` adds the per-layer medians (which layer, forward or backward).
BLAS runs with the toolkit's thread policy (solvers/threads.py) and PyTorch
is given the same thread count. ``--load`` starts a one-core CPU hog and
compares NumPy's default (a BLAS thread per core) with the policy's pick.
The two run in alternating blocks of iterations (not interleaved one by one:
each library's idle BLAS/OpenMP threads spin for a while and would slow the
other on a small machine).
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
    """The toolkit's BLAS thread policy (solvers/threads.py), which PyTorch is then given too."""
    from solvers import threads
    n = threads.apply_default()
    if n is None:   # the user's OPENBLAS/OMP/MKL variable rules
        for var in threads.BLAS_ENVS:
            if os.environ.get(var, "").strip().isdigit():
                return int(os.environ[var])
        return threads.usable_cores()
    return n


def load_mode(args, images, labels):
    """A one-core CPU hog beside the benchmark: NumPy's default (a BLAS thread per core) against
    the toolkit's policy (the free cores, read from the 1-minute load average)."""
    import subprocess
    from threadpoolctl import threadpool_limits
    from solvers import threads
    cores = threads.usable_cores()
    _, step = make_ours(images, labels)

    def timed(n_threads):
        with threadpool_limits(limits=n_threads, user_api="blas"):
            for _ in range(args.warmup):
                step()
            return summarize([step() for _ in range(args.iterations)])["forward_backward"]

    quiet_threads = threads.free_cores()
    quiet = timed(quiet_threads)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        print("CPU hog started (pid %d); waiting %d s for the 1-minute load average to see it"
              % (hog.pid, args.load_wait), flush=True)
        time.sleep(args.load_wait)
        picked = threads.free_cores()
        all_cores = timed(cores)
        policy = timed(picked)
    finally:
        hog.kill()
        hog.wait()
    row = "  %-34s %2d thread(s)  forward-backward %8.2f ms  %5.2fx the quiet figure"
    print("LeNet train step, batch %d, medians of %d (usable cores %d, load now %.2f)"
          % (args.batch, args.iterations, cores, os.getloadavg()[0]))
    print(row % ("quiet, the policy's pick", quiet_threads, quiet, 1.0))
    print(row % ("one-core hog, a thread per core", cores, all_cores, all_cores / quiet))
    print(row % ("one-core hog, the policy's pick", picked, policy, policy / quiet)
          + "   (target <= 1.5x)")
    return 0


def median_ms(samples):
    return statistics.median(samples) * 1e3


def make_ours(images, labels):
    """Our net, loaded and fed; returns (net, step) where step() times one iteration."""
    from solvers.net import Net
    net = Net(lenet_param(images.shape[0]))
    weights = os.path.join(GOLDEN_LENET, "lenet_init.caffemodel")
    if os.path.isfile(weights):
        net.copy_from(weights)
    net.blobs["data"].data[...] = images
    net.blobs["label"].data[...] = labels
    return net, timed_step(net)


def timed_step(net):
    """step() runs one training iteration of ``net`` (param diffs cleared, forward, backward) and
    returns (forward seconds, backward seconds, loss); bench/char_rnn.py uses it too."""
    last = len(net.layers) - 1
    clock = time.perf_counter

    def step():
        net.clear_param_diffs()
        t0 = clock()
        loss = net.forward_from_to(0, last)
        t1 = clock()
        net.backward_from_to(last, 0)
        return t1 - t0, clock() - t1, float(loss)
    return step


def profile_layers(net, iterations):
    """Median forward and backward milliseconds of each layer (backward where it runs)."""
    clock = time.perf_counter
    fwd = [[] for _ in net.layers]
    bwd = [[] for _ in net.layers]
    for _ in range(iterations):
        for i, (layer, bottom, top) in enumerate(zip(net.layers, net.bottom_vecs, net.top_vecs)):
            t = clock()
            layer.reshape(bottom, top)
            layer.forward(bottom, top)
            fwd[i].append(clock() - t)
        net._set_loss_diffs()
        for i in range(len(net.layers) - 1, -1, -1):
            if net.layer_need_backward[i]:
                t = clock()
                net.layers[i].backward(net.top_vecs[i], net.bottom_need_backward[i], net.bottom_vecs[i])
                bwd[i].append(clock() - t)
    return [(name, median_ms(f), median_ms(b) if b else 0.0) for name, f, b in zip(net.layer_names, fwd, bwd)]


def make_torch(net, images, labels, threads):
    """The same LeNet in PyTorch with our net's weights; returns step() as make_ours does."""
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    p = {name: [torch.tensor(np.array(b.data), requires_grad=True) for b in blobs]
         for name, blobs in net.params.items()}
    x = torch.from_numpy(np.array(images))
    y = torch.from_numpy(np.array(labels)).long()
    clock = time.perf_counter

    def forward():
        h = F.conv2d(x, *p["conv1"])
        h = F.max_pool2d(h, 2, 2)
        h = F.conv2d(h, *p["conv2"])
        h = F.max_pool2d(h, 2, 2)
        h = F.relu(F.linear(h.flatten(1), *p["fc1"]))
        h = F.linear(h, *p["score"])
        return F.cross_entropy(h, y)

    def step():
        for ts in p.values():
            for t in ts:
                t.grad = None
        t0 = clock()
        loss = forward()
        t1 = clock()
        loss.backward()
        return t1 - t0, clock() - t1, loss.item()
    return step


def summarize(samples):
    fwd = [s[0] for s in samples]
    bwd = [s[1] for s in samples]
    return {"forward": median_ms(fwd), "backward": median_ms(bwd),
            "forward_backward": median_ms([f + b for f, b in zip(fwd, bwd)]), "loss": float(samples[-1][2])}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--profile", action="store_true", help="also print per-layer medians")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    ap.add_argument("--load", action="store_true",
                    help="run a one-core CPU hog and compare NumPy's default threads with the policy's")
    ap.add_argument("--load-wait", type=int, default=60,
                    help="--load: seconds to let the 1-minute load average see the hog (default 60)")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    images = rng.random((args.batch, 1, 28, 28), dtype=np.float32)
    labels = rng.integers(0, 10, args.batch).astype(np.float32)
    if args.load:
        return load_mode(args, images, labels)
    threads = blas_threads()
    print("LeNet, batch %d, %d iterations after %d warm-up (medians)" % (args.batch, args.iterations, args.warmup))
    print("numpy %s; BLAS threads %d; OPENBLAS_CORETYPE=%s" % (
        np.__version__, threads, os.environ.get("OPENBLAS_CORETYPE", "(unset)")))

    net, ours_step = make_ours(images, labels)
    for _ in range(args.warmup):
        ours_step()
    rss_ours = peak_rss_mib()   # before torch is imported
    layers = profile_layers(net, args.iterations) if args.profile else []   # before torch's threads exist
    torch_step = None
    if not args.no_torch:
        try:
            import torch
            torch_step = make_torch(net, images, labels, threads)
            for _ in range(args.warmup):
                torch_step()
        except ImportError:
            print("torch: not importable, no comparison (pip install torch to compare; never a dependency)")
    # Blocks of iterations, alternating, so both see the same machine load; the first two of
    # each block are dropped (the other library's idle threads may still be spinning).
    ours, theirs = [], []
    rounds = max(1, min(5, args.iterations // 10))
    for r in range(rounds):
        n = args.iterations // rounds + (1 if r < args.iterations % rounds else 0)
        ours.extend([ours_step() for _ in range(n + 2)][2:])
        if torch_step is not None:
            theirs.extend([torch_step() for _ in range(n + 2)][2:])
    ours = summarize(ours)
    row = "%-8s forward %8.2f ms  backward %8.2f ms  forward-backward %8.2f ms  peak RSS %7.1f MiB  loss %.6f"
    print(row % ("ours", ours["forward"], ours["backward"], ours["forward_backward"], rss_ours, ours["loss"]))
    if args.profile:
        for name, f, b in layers:
            print("    %-8s forward %7.2f ms  backward %7.2f ms" % (name, f, b))
    if torch_step is None:
        return 0
    theirs = summarize(theirs)
    print(row % ("pytorch", theirs["forward"], theirs["backward"], theirs["forward_backward"], peak_rss_mib(),
                 theirs["loss"]) + "  (torch %s, %d threads; RSS includes ours)" % (torch.__version__,
                                                                                  torch.get_num_threads()))
    if abs(theirs["loss"] - ours["loss"]) > 1e-4 * max(1.0, abs(theirs["loss"])):
        print("WARNING: the losses differ: ours %.6f, PyTorch %.6f" % (ours["loss"], theirs["loss"]))
    ratio = {k: ours[k] / theirs[k] for k in ("forward", "backward", "forward_backward")}
    print("ratio ours/pytorch: forward %.2fx  backward %.2fx  forward-backward %.2fx (target <= 1.0x)"
          % (ratio["forward"], ratio["backward"], ratio["forward_backward"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
