"""Keras's seeding: where an initializer, a Dropout layer or `fit`'s shuffling gets its
random numbers when the user gave no seed.

`keras.utils.set_random_seed(s)` makes every later draw repeatable: it seeds Python's
`random`, NumPy's global generator, `fj.random` and the sequence here. Without it the
sequence starts from fresh entropy, as Keras's does.
"""
import itertools

import numpy as np

_state = {"seed": None, "counter": itertools.count()}


def seed(value):
    """Restart the sequence from `value` (None: from fresh entropy)."""
    _state["seed"] = None if value is None else int(value)
    _state["counter"] = itertools.count()


def next_seed():
    """A new 63-bit seed: the next in the sequence, or fresh entropy when unseeded."""
    if _state["seed"] is None:
        return int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> np.uint64(1))
    ss = np.random.SeedSequence([_state["seed"], next(_state["counter"])])
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


def rng(seed=None):
    """A NumPy Generator: from `seed` when given (the same draws every time), else the next
    seed of the sequence."""
    return np.random.default_rng(next_seed() if seed is None else int(seed))
