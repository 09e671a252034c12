"""The toolkit's random number generator.

Caffe keeps one seedable generator for fillers, dropout and shuffling; so do
we. ``set_random_seed`` makes runs repeatable; the generator state can be
saved beside a snapshot so resumed training draws the same numbers.
"""
import numpy as np

_rng = [np.random.default_rng()]


def set_random_seed(seed):
    _rng[0] = np.random.default_rng(int(seed))


def get_rng():
    return _rng[0]


def get_state():
    return _rng[0].bit_generator.state


def set_state(state):
    _rng[0].bit_generator.state = state
