#!/usr/bin/env python
"""A character-level LSTM language model in Caffe's layers, written with NetSpec.

    python examples/char_rnn/char_rnn.py [--data DIR] [--out DIR] [--hidden 256] [--layers 2]

Reads DIR/vocab.json (from create_char_data.py: the characters, T and N of
the data layout, the validation size) and writes into --out (default: this
folder) char_rnn_train.prototxt, char_rnn_test.prototxt,
char_rnn_deploy.prototxt and char_rnn_solver.prototxt. Paths inside are
relative to the repository root, where training runs:

    python tools/solve.py train --solver examples/char_rnn/char_rnn_solver.prototxt

The net, time-major as Caffe's recurrent layers want it (T steps x N streams):

    HDF5Data -> data (T, N), cont (T, N), label (T, N)
    Embed (vocabulary -> E)             (T, N, E)
    LSTM x layers, each num_output H    (T, N, H), state carried across batches by cont
    InnerProduct axis 2 (H -> vocab)    (T, N, V)
    SoftmaxWithLoss axis 2 with label   mean nats per character

The deploy net is the same stack for one step of one stream (T = N = 1):
each LSTM has ``expose_hidden``, so its state enters as bottoms h0_k / c0_k
and leaves as tops h_k / c_k; sample.py copies one into the other per step.

The default sizes are chosen to learn the default corpus within 15 minutes on
two CPU cores (see the README's char-RNN section for the figures): E = 64,
H = 256, 2 layers, Adam at 2e-3 halved every 1000 iterations, gradients
clipped to an L2 norm of 5, 2000 iterations of T = 50 x N = 32 characters.
"""
import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout, no install needed
    sys.path.insert(0, str(REPO))

from netspec import NetSpec, layers as L, solver, write_prototxt  # noqa: E402
from netspec.errors import CaffeError  # noqa: E402
from solvers.data.char_sequences import read_vocabulary  # noqa: E402

TRAIN_NET = "char_rnn_train.prototxt"
TEST_NET = "char_rnn_test.prototxt"
DEPLOY_NET = "char_rnn_deploy.prototxt"
SOLVER = "char_rnn_solver.prototxt"

DEFAULTS = dict(embed=64, hidden=256, layers=2, base_lr=2e-3, stepsize=1000, max_iter=2000,
                clip=5.0, test_interval=250, snapshot=500)


def _uniform(scale=0.08):
    return dict(type="uniform", min=-scale, max=scale)


def _stack(n, x, cont, vocab_size, embed, hidden, layers, deploy=False):
    """Embed -> LSTM x layers -> InnerProduct on the blobs in ``n``; returns the logits top."""
    n.embed = L.Embed(x, input_dim=vocab_size, num_output=embed, bias_term=False,
                      weight_filler=_uniform())
    h = n.embed
    for k in range(1, layers + 1):
        rp = dict(num_output=hidden, weight_filler=_uniform(), bias_filler=dict(type="constant"))
        if deploy:
            rp["expose_hidden"] = True
            h0, c0 = (L.Input(shape=dict(dim=[1, 1, hidden])) for _ in range(2))
            setattr(n, "h0_%d" % k, h0)
            setattr(n, "c0_%d" % k, c0)
            out, hT, cT = L.LSTM(h, cont, h0, c0, recurrent_param=rp, ntop=3)
            setattr(n, "lstm%d" % k, out)
            setattr(n, "h_%d" % k, hT)
            setattr(n, "c_%d" % k, cT)
        else:
            out = L.LSTM(h, cont, recurrent_param=rp)
            setattr(n, "lstm%d" % k, out)
        h = out
    n.logits = L.InnerProduct(h, num_output=vocab_size, axis=2, weight_filler=dict(type="xavier"),
                              bias_filler=dict(type="constant"))
    return n.logits


def char_rnn(source, steps, vocab_size, embed, hidden, layers):
    """The training/test net: (T, N) ids from HDF5 lists in ``source``, mean loss per character."""
    n = NetSpec()
    n.data, n.cont, n.label = L.HDF5Data(source=source, batch_size=steps, ntop=3)
    logits = _stack(n, n.data, n.cont, vocab_size, embed, hidden, layers)
    n.loss = L.SoftmaxWithLoss(logits, n.label, softmax_param=dict(axis=2))
    return n.to_proto()


def char_rnn_deploy(vocab_size, embed, hidden, layers):
    """One step of one stream; LSTM state in through h0_k/c0_k, out through h_k/c_k."""
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1]))
    n.cont = L.Input(shape=dict(dim=[1, 1]))
    logits = _stack(n, n.data, n.cont, vocab_size, embed, hidden, layers, deploy=True)
    n.prob = L.Softmax(logits, axis=2)
    return n.to_proto()


def char_rnn_solver(train_net, test_net, test_iter, snapshot_prefix, base_lr, stepsize, max_iter,
                    clip, test_interval, snapshot):
    """Adam with a step decay and gradient clipping: the usual char-RNN recipe, in Caffe's fields."""
    return solver(train_net=train_net, test_net=[test_net], test_iter=[test_iter],
                  test_interval=test_interval, type="Adam", base_lr=base_lr,
                  momentum=0.9, momentum2=0.999, delta=1e-8,
                  lr_policy="step", gamma=0.5, stepsize=stepsize,
                  clip_gradients=clip, display=50, average_loss=50, max_iter=max_iter,
                  snapshot=snapshot, snapshot_prefix=snapshot_prefix,
                  random_seed=1, solver_mode="CPU")


def _as_written(path):
    """A path as the files refer to it: from the repository root, else absolute."""
    path = Path(os.path.abspath(path))
    try:
        return path.relative_to(REPO).as_posix()
    except ValueError:
        return path.as_posix()


def write_char_rnn(data_dir, out, embed=DEFAULTS["embed"], hidden=DEFAULTS["hidden"],
                   layers=DEFAULTS["layers"], base_lr=DEFAULTS["base_lr"],
                   stepsize=DEFAULTS["stepsize"], max_iter=DEFAULTS["max_iter"],
                   clip=DEFAULTS["clip"], test_interval=DEFAULTS["test_interval"],
                   snapshot=DEFAULTS["snapshot"]):
    """Write the three nets and the solver into ``out`` for the data in ``data_dir``; return their paths."""
    meta = read_vocabulary(os.path.join(data_dir, "vocab.json"))
    vocab_size, steps = len(meta["vocab"]), int(meta["steps"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / TRAIN_NET, out / TEST_NET, out / DEPLOY_NET, out / SOLVER]
    sizes = dict(vocab_size=vocab_size, embed=embed, hidden=hidden, layers=layers)
    write_prototxt(char_rnn(_as_written(meta["train"]["list"]), steps, **sizes), paths[0])
    write_prototxt(char_rnn(_as_written(meta["val"]["list"]), steps, **sizes), paths[1])
    write_prototxt(char_rnn_deploy(**sizes), paths[2])
    test_iter = meta["val"]["rows"] // steps  # one test pass = the whole validation text, once
    write_prototxt(char_rnn_solver(_as_written(paths[0]), _as_written(paths[1]), test_iter,
                                   _as_written(out / "char_rnn"), base_lr, stepsize, max_iter, clip,
                                   test_interval, snapshot), paths[3])
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(HERE / "data"),
                    help="folder of create_char_data.py's output (default: %(default)s)")
    ap.add_argument("--out", default=str(HERE), help="folder for the four files (default: %(default)s)")
    for name in ("embed", "hidden", "layers", "max_iter", "stepsize", "test_interval", "snapshot"):
        ap.add_argument("--" + name.replace("_", "-"), type=int, default=DEFAULTS[name],
                        help="(default: %(default)s)")
    ap.add_argument("--base-lr", type=float, default=DEFAULTS["base_lr"], help="(default: %(default)s)")
    ap.add_argument("--clip", type=float, default=DEFAULTS["clip"],
                    help="clip_gradients, the largest L2 norm of all gradients (default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        paths = write_char_rnn(args.data, args.out, embed=args.embed, hidden=args.hidden,
                               layers=args.layers, base_lr=args.base_lr, stepsize=args.stepsize,
                               max_iter=args.max_iter, clip=args.clip,
                               test_interval=args.test_interval, snapshot=args.snapshot)
    except CaffeError as e:
        sys.exit("char_rnn.py: %s" % e)
    for path in paths:
        print("wrote", path)


if __name__ == "__main__":
    main()
