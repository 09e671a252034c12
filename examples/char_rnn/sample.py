#!/usr/bin/env python
"""Write text with a trained char-RNN, one character at a time.

    python examples/char_rnn/sample.py --weights examples/char_rnn/char_rnn_iter_2000.caffemodel \\
        [--temperature 0.8] [--seed TEXT] [--length 500] [--random-seed 1]

Runs the deploy net (char_rnn_deploy.prototxt: T = 1 step of N = 1 stream).
Each LSTM exposes its state (``expose_hidden``): the final h/c tops of one
step are copied into the h0/c0 inputs of the next, which is how the state
carries on. The seed text is fed first (its characters must be in the
vocabulary), then each next character is drawn from softmax(logits /
temperature): lower temperatures give safer, more repetitive text.
"""
import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from netspec.errors import CaffeError, DataError  # noqa: E402
from solvers.data.char_sequences import read_vocabulary  # noqa: E402


class Sampler:
    """A deploy net plus the vocabulary; ``feed`` one character id, ``next_ids`` to draw more."""

    def __init__(self, deploy, weights, vocab):
        from solvers.net import Net
        self.net = Net(deploy, phase="TEST", weights=weights)
        self.vocab = vocab
        self.layers = sorted(int(name[3:]) for name in self.net.blobs if name.startswith("h0_"))
        if not self.layers or "logits" not in self.net.blobs:
            raise DataError("%s is not a char-RNN deploy net (no h0_k inputs or no logits blob)" % deploy)
        width = self.net.blobs["logits"].shape[-1]
        if width != len(vocab):
            raise DataError("the net predicts %d characters but the vocabulary has %d; use the "
                            "vocab.json the model was trained with" % (width, len(vocab)))
        self.reset()

    def reset(self):
        """Forget the state: the next character starts a sequence (cont = 0)."""
        for k in self.layers:
            self.net.blobs["h0_%d" % k].data[...] = 0
            self.net.blobs["c0_%d" % k].data[...] = 0
        self.cont = 0.0

    def feed(self, char_id):
        """One step: returns the logits (vocab,) for the character after ``char_id``."""
        blobs = self.net.blobs
        blobs["data"].data[...] = char_id
        blobs["cont"].data[...] = self.cont
        self.net.forward()
        for k in self.layers:
            blobs["h0_%d" % k].data[...] = blobs["h_%d" % k].data
            blobs["c0_%d" % k].data[...] = blobs["c_%d" % k].data
        self.cont = 1.0
        return blobs["logits"].data.reshape(-1).astype(np.float64)

    def sample(self, seed_ids, length, temperature, rng):
        """Feed ``seed_ids``, then draw ``length`` ids; returns the drawn ids."""
        logits = None
        for i in seed_ids:
            logits = self.feed(i)
        out = []
        for _ in range(length):
            z = logits / temperature
            p = np.exp(z - z.max())
            p /= p.sum()
            i = int(rng.choice(len(p), p=p))
            out.append(i)
            logits = self.feed(i)
        return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True, help="a .caffemodel (or .h5) from training")
    ap.add_argument("--model", default=os.path.join(HERE, "char_rnn_deploy.prototxt"),
                    help="the deploy net (default: %(default)s)")
    ap.add_argument("--vocab", default=os.path.join(HERE, "data", "vocab.json"),
                    help="the vocabulary the model was trained with (default: %(default)s)")
    ap.add_argument("--temperature", type=float, default=0.8, help="(default: %(default)s)")
    ap.add_argument("--seed", default="\n", help="text to start from (default: a newline)")
    ap.add_argument("--length", type=int, default=500, help="characters to write (default: %(default)s)")
    ap.add_argument("--random-seed", type=int, default=1, help="for the draws (default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        if not args.temperature > 0:
            raise DataError("--temperature must be positive, got %r" % args.temperature)
        if args.length < 0:
            raise DataError("--length must be >= 0, got %d" % args.length)
        if not args.seed:
            raise DataError("--seed must hold at least one character")
        vocab = read_vocabulary(args.vocab)["vocab"]
        seed_ids = vocab.encode(args.seed, what="--seed")
        sampler = Sampler(args.model, args.weights, vocab)
        ids = sampler.sample(seed_ids, args.length, args.temperature, np.random.RandomState(args.random_seed))
    except CaffeError as e:
        sys.exit("sample.py: %s" % e)
    sys.stdout.write(args.seed + vocab.decode(ids) + "\n")


if __name__ == "__main__":
    main()
