#!/usr/bin/env python
"""One training iteration of the default char-RNN: this toolkit against PyTorch's nn.LSTM, same run.

    python bench/char_rnn.py [--iterations 20] [--warmup 3] [--vocab 161] [--no-torch]

The model is examples/char_rnn's default (Embed 64 -> 2 x LSTM 256 ->
InnerProduct -> SoftmaxWithLoss over T = 50 steps x N = 32 streams), its
HDF5Data layer swapped for Input blobs holding random character ids, cont = 0
at t = 0 and 1 after. PyTorch gets the same weights (gates reordered from
Caffe's i, f, o, g to its i, f, g, o; its second bias set to 0) and the same
data; the two losses are compared, so the benchmark also checks that both
compute the same thing. Timed: forward and backward of the net (the
solver's update is left out on both sides). Prints medians and the ratio
ours / PyTorch. BLAS threads follow the toolkit's policy (free cores, or
CAFFE_NUM_THREADS / OPENBLAS_NUM_THREADS), and PyTorch gets as many. The
machine may be shared: read the ratio, not the milliseconds; the two run in
alternating blocks so both see the same load.
"""
import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import numpy as np  # noqa: E402

from lenet import timed_step  # noqa: E402


def default_net_param(vocab, steps, streams):
    """The default training net with Input layers in place of HDF5Data."""
    import importlib.util
    from netspec import caffe_pb2
    spec = importlib.util.spec_from_file_location("char_rnn_example",
                                                  os.path.join(ROOT, "examples", "char_rnn", "char_rnn.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    d = example.DEFAULTS
    param = example.char_rnn("unused.txt", steps, vocab, d["embed"], d["hidden"], d["layers"])
    data = param.layer[0]
    data.ClearField("hdf5_data_param")
    data.type = "Input"
    for _ in range(3):
        data.input_param.shape.add().dim.extend([steps, streams])
    param.state.phase = caffe_pb2.TRAIN
    return param, d


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


def make_ours(param, ids, labels, cont):
    from solvers.net import Net
    net = Net(param)
    net.blobs["data"].data[...] = ids
    net.blobs["label"].data[...] = labels
    net.blobs["cont"].data[...] = cont
    return net, timed_step(net)


def _caffe_to_torch_gates(w, H):
    """Caffe's gate blocks (i, f, o, g) in PyTorch's order (i, f, g, o)."""
    i, f, o, g = (w[k * H:(k + 1) * H] for k in range(4))
    return np.concatenate([i, f, g, o])


def make_torch(net, ids, labels, layers, hidden, threads):
    import torch
    torch.set_num_threads(threads)
    vocab, embed = net.params["embed"][0].shape
    emb = torch.nn.Embedding(vocab, embed)
    lstm = torch.nn.LSTM(embed, hidden, num_layers=layers)
    out = torch.nn.Linear(hidden, vocab)
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(np.array(net.params["embed"][0].data)))
        for k in range(layers):
            w_x, b, w_h = (np.array(blob.data) for blob in net.params["lstm%d" % (k + 1)])
            getattr(lstm, "weight_ih_l%d" % k).copy_(torch.from_numpy(_caffe_to_torch_gates(w_x, hidden)))
            getattr(lstm, "weight_hh_l%d" % k).copy_(torch.from_numpy(_caffe_to_torch_gates(w_h, hidden)))
            getattr(lstm, "bias_ih_l%d" % k).copy_(torch.from_numpy(_caffe_to_torch_gates(b, hidden)))
            getattr(lstm, "bias_hh_l%d" % k).zero_()
        out.weight.copy_(torch.from_numpy(np.array(net.params["logits"][0].data)))
        out.bias.copy_(torch.from_numpy(np.array(net.params["logits"][1].data)))
    params = list(emb.parameters()) + list(lstm.parameters()) + list(out.parameters())
    x = torch.from_numpy(ids.astype(np.int64))
    y = torch.from_numpy(labels.astype(np.int64)).reshape(-1)
    clock = time.perf_counter

    def step():
        for p in params:
            p.grad = None
        t0 = clock()
        h, _ = lstm(emb(x))       # zero initial state = cont 0 at t = 0
        loss = torch.nn.functional.cross_entropy(out(h).reshape(-1, vocab), y)
        t1 = clock()
        loss.backward()
        return t1 - t0, clock() - t1, loss.item()
    return step


def summarize(samples):
    f = [s[0] for s in samples]
    b = [s[1] for s in samples]
    ms = lambda xs: statistics.median(xs) * 1e3  # noqa: E731
    return {"forward": ms(f), "backward": ms(b), "forward_backward": ms([u + v for u, v in zip(f, b)]),
            "loss": samples[-1][2]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=161, help="vocabulary size (the default corpus has 161)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, args.vocab, (args.steps, args.streams)).astype(np.float32)
    labels = rng.integers(0, args.vocab, (args.steps, args.streams)).astype(np.float32)
    cont = np.ones((args.steps, args.streams), np.float32)
    cont[0] = 0
    param, d = default_net_param(args.vocab, args.steps, args.streams)
    threads = blas_threads()
    print("char-RNN: Embed %d -> %d x LSTM %d -> InnerProduct %d; T %d x N %d; %d iterations after %d "
          "warm-up (medians); BLAS threads %d"
          % (d["embed"], d["layers"], d["hidden"], args.vocab, args.steps, args.streams, args.iterations,
             args.warmup, threads))
    net, ours_step = make_ours(param, ids, labels, cont)
    for _ in range(args.warmup):
        ours_step()
    torch_step = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("torch: not importable, no comparison (pip install torch to compare; never a dependency)")
        else:
            torch_step = make_torch(net, ids, labels, d["layers"], d["hidden"], threads)
            for _ in range(args.warmup):
                torch_step()
    ours, theirs = [], []
    rounds = max(1, min(4, args.iterations // 5))
    for r in range(rounds):
        n = args.iterations // rounds + (1 if r < args.iterations % rounds else 0)
        ours.extend([ours_step() for _ in range(n + 1)][1:])   # first of a block dropped: the other
        if torch_step is not None:                              # library's threads may still spin
            theirs.extend([torch_step() for _ in range(n + 1)][1:])
    row = "%-8s forward %8.1f ms  backward %8.1f ms  iteration %8.1f ms  loss %.6f"
    ours = summarize(ours)
    print(row % ("ours", ours["forward"], ours["backward"], ours["forward_backward"], ours["loss"]))
    if torch_step is None:
        return 0
    theirs = summarize(theirs)
    print(row % ("pytorch", theirs["forward"], theirs["backward"], theirs["forward_backward"], theirs["loss"])
          + "  (torch %s, %d threads)" % (torch.__version__, torch.get_num_threads()))
    if abs(theirs["loss"] - ours["loss"]) > 1e-4 * max(1.0, abs(theirs["loss"])):
        print("WARNING: the losses differ: ours %.6f, PyTorch %.6f" % (ours["loss"], theirs["loss"]))
    print("ratio ours/pytorch: forward %.2fx  backward %.2fx  iteration %.2fx"
          % tuple(ours[k] / theirs[k] for k in ("forward", "backward", "forward_backward")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
