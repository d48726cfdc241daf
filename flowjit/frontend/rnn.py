"""Recurrent cells and layers for `fj.nn`, on `fj.scan` (one compiled loop over time).

Weights follow TensorFlow 1's layouts, so a TF1 program's variables fit as they are:
- LSTM: `kernel` (input + units, 4 * units) applied to concat([x, h]), `bias` (4 * units,),
  gates i, j, f, o in that order; c' = c * sigmoid(f + forget_bias) + sigmoid(i) * tanh(j),
  h' = tanh(c') * sigmoid(o);
- GRU: `gate_kernel` (input + units, 2 * units) giving r, u; `candidate_kernel` (input +
  units, units) applied to concat([x, r * h]); h' = u * h + (1 - u) * tanh(...);
- simple RNN: h' = activation(concat([x, h]) @ kernel + bias).

The layer functions (`lstm`, `gru`, `simple_rnn`) compute the input's share of every
step (x @ kernel[:input] + bias) as one GEMM over all time steps before the loop, so the
loop holds only the recurrent GEMM (h @ kernel[input:]) and the gates' elementwise work.
"""
from . import api as F
from .control_flow import scan


def _gates(z, n):
    return F.split(z, n, axis=1)


def lstm_cell(x, state, kernel, bias, forget_bias=1.0):
    """One LSTM step: returns (h, (c, h)). `state` is (c, h)."""
    c, h = state
    z = F.matmul(F.concat([x, h], axis=1), kernel) + bias
    return _lstm_gates(z, c, forget_bias)


def _lstm_gates(z, c, forget_bias):
    i, j, f, o = _gates(z, 4)
    c = c * F.sigmoid(f + forget_bias) + F.sigmoid(i) * F.tanh(j)
    h = F.tanh(c) * F.sigmoid(o)
    return h, (c, h)


def gru_cell(x, h, gate_kernel, gate_bias, candidate_kernel, candidate_bias):
    """One GRU step (TF1's GRUCell): returns (h, h)."""
    r, u = _gates(F.sigmoid(F.matmul(F.concat([x, h], axis=1), gate_kernel) + gate_bias), 2)
    cand = F.tanh(F.matmul(F.concat([x, r * h], axis=1), candidate_kernel) + candidate_bias)
    h = u * h + (1.0 - u) * cand
    return h, h


def simple_rnn_cell(x, h, kernel, bias, activation=None):
    """One step of a plain RNN: returns (h, h)."""
    act = activation or F.tanh
    h = act(F.matmul(F.concat([x, h], axis=1), kernel) + bias)
    return h, h


def dynamic_rnn(cell, inputs, initial_state, sequence_length=None, time_major=False, reverse=False):
    """Run `cell(x_t, state) -> (output, new state)` over the time dim of `inputs`
    ((batch, time, features), or (time, batch, features) with time_major) in one loop.
    Returns (outputs stacked over time, in the inputs' layout, and the final state).

    With `sequence_length` (one int per batch row), steps at or past a row's length
    leave its state as it was and output zeros, as TF's dynamic_rnn does; with
    `reverse=True` that makes each row run from its own last step back to its first."""
    x = F.convert_to_tensor(inputs)
    xs = x if time_major else F.transpose(x, (1, 0, 2))
    out, state = _run(cell, xs, initial_state, sequence_length, reverse)
    return (out if time_major else F.transpose(out, (1, 0, 2))), state


def _run(cell, xs, initial_state, sequence_length, reverse):
    """The loop over time-major xs; cell receives each step's slice of xs."""
    if sequence_length is None:
        def step(state, x_t):
            out, new = cell(x_t, state)
            return new, out
        state, outs = scan(step, initial_state, xs, reverse=reverse)
        return outs, state
    lengths = F.reshape(F.cast(F.convert_to_tensor(sequence_length), "int32"), (-1, 1))
    start = F.cast(F.shape(xs)[0], "int32") - 1 if reverse else F.constant(0, "int32")
    delta = -1 if reverse else 1

    def masked(carry, x_t):
        t, state = carry
        out, new = cell(x_t, state)
        live = t < lengths                                # (batch, 1)
        new = _where_tree(live, new, state)
        return (t + delta, new), F.where(live, out, F.zeros_like(out))
    (_, state), outs = scan(masked, (start, initial_state), xs, reverse=reverse)
    return outs, state


def _where_tree(cond, a, b):
    if isinstance(a, (tuple, list)):
        return type(a)(_where_tree(cond, x, y) for x, y in zip(a, b))
    return F.where(cond, a, b)


def _projected(xs, kernel, bias):
    """x @ kernel[:input] + bias for every step at once (time-major xs): (time, batch, n)."""
    n_in = xs.shape[2]
    z = F.matmul(F.reshape(xs, (-1, n_in)), kernel[:n_in]) + bias
    return F.reshape(z, (xs.shape[0], xs.shape[1], kernel.shape[1])), kernel[n_in:]


def _zeros_state(xs, units, dtype):
    return F.broadcast_to(F.zeros((), dtype), (xs.shape[1], units))


def lstm(inputs, kernel, bias, initial_state=None, forget_bias=1.0, sequence_length=None,
         time_major=False, reverse=False):
    """An LSTM layer over a whole sequence (TF1's BasicLSTMCell weights): returns
    (outputs, (c, h)). `initial_state` (c, h) defaults to zeros."""
    kernel, bias = F.convert_to_tensor(kernel), F.convert_to_tensor(bias)

    def make(xs):
        proj, recurrent = _projected(xs, kernel, bias)
        units = recurrent.shape[0]
        state = initial_state or (_zeros_state(xs, units, kernel.dtype),) * 2

        def cell(z_t, state):
            c, h = state
            return _lstm_gates(z_t + F.matmul(h, recurrent), c, forget_bias)
        return _Projected(cell, proj), tuple(state)
    return _layer_projected(inputs, time_major, sequence_length, reverse, make)


def gru(inputs, gate_kernel, gate_bias, candidate_kernel, candidate_bias, initial_state=None,
        sequence_length=None, time_major=False, reverse=False):
    """A GRU layer over a whole sequence (TF1's GRUCell weights): returns (outputs, h)."""
    gk, gb = F.convert_to_tensor(gate_kernel), F.convert_to_tensor(gate_bias)
    ck, cb = F.convert_to_tensor(candidate_kernel), F.convert_to_tensor(candidate_bias)

    def make(xs):
        n_in = xs.shape[2]
        # the input's share of both the gates and the candidate, for every step at once
        both = F.concat([gk[:n_in], ck[:n_in]], axis=1)
        z = F.matmul(F.reshape(xs, (-1, n_in)), both) + F.concat([gb, cb], axis=0)
        proj = F.reshape(z, (xs.shape[0], xs.shape[1], both.shape[1]))
        g_rec, c_rec = gk[n_in:], ck[n_in:]
        units = c_rec.shape[0]
        state = initial_state if initial_state is not None else _zeros_state(xs, units, gk.dtype)

        def cell(p_t, h):
            pg, pc = p_t[:, :2 * units], p_t[:, 2 * units:]
            r, u = _gates(F.sigmoid(pg + F.matmul(h, g_rec)), 2)
            cand = F.tanh(pc + F.matmul(r * h, c_rec))
            h = u * h + (1.0 - u) * cand
            return h, h
        return _Projected(cell, proj), state
    return _layer_projected(inputs, time_major, sequence_length, reverse, make)


def simple_rnn(inputs, kernel, bias, initial_state=None, activation=None, sequence_length=None,
               time_major=False, reverse=False):
    """A plain RNN layer over a whole sequence: returns (outputs, h)."""
    kernel, bias = F.convert_to_tensor(kernel), F.convert_to_tensor(bias)
    act = activation or F.tanh

    def make(xs):
        proj, recurrent = _projected(xs, kernel, bias)
        state = initial_state if initial_state is not None else \
            _zeros_state(xs, recurrent.shape[0], kernel.dtype)

        def cell(p_t, h):
            h = act(p_t + F.matmul(h, recurrent))
            return h, h
        return _Projected(cell, proj), state
    return _layer_projected(inputs, time_major, sequence_length, reverse, make)


class _Projected:
    """A cell that reads the precomputed input projection instead of the raw input."""

    def __init__(self, cell, proj):
        self.cell, self.proj = cell, proj


def _layer_projected(inputs, time_major, sequence_length, reverse, make):
    x = F.convert_to_tensor(inputs)
    xs = x if time_major else F.transpose(x, (1, 0, 2))
    projected, state = make(xs)
    out, state = _run(projected.cell, projected.proj, state, sequence_length, reverse)
    return (out if time_major else F.transpose(out, (1, 0, 2))), state
