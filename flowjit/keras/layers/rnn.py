"""Recurrent layers (Keras 3's SimpleRNN, LSTM, GRU, their cells, and Bidirectional), each
one compiled loop over time on `fj.scan`.

Weights as Keras 3, owned by the layer's `cell` (so `lstm.cell.kernel`, and the weights'
order kernel, recurrent_kernel, bias):
- SimpleRNN: kernel (input_dim, units), recurrent_kernel (units, units), bias (units,);
  h' = activation(x @ kernel + bias + h @ recurrent_kernel).
- LSTM: kernel (input_dim, 4u), recurrent_kernel (u, 4u), bias (4u,), gates i, f, c, o;
  c' = f * c + i * activation(z_c), h' = o * activation(c'), the gates through
  recurrent_activation; the states are [h, c]; `unit_forget_bias` initialises the
  forget gate's bias to ones.
- GRU: kernel (input_dim, 3u), recurrent_kernel (u, 3u), gates z, r, h; with
  `reset_after` (Keras 3's default) bias (2, 3u), the input bias and the recurrent bias,
  and hh = activation(x_h + r * (h @ R_h + b_h)); without, bias (3u,) and
  hh = activation(x_h + (r * h) @ R_h); h' = z * h + (1 - z) * hh.

The input's share of every step (x @ kernel + input bias) is one GEMM over all time steps
before the loop; the loop holds only h @ recurrent_kernel and the gates. Dropout masks
(training only) are drawn once per call before the loop, one per sequence and the same at
every step, as Keras; with recurrent dropout (Keras's implementation 1) each gate gets
its own masks. `go_backwards` runs from the last step to the first and returns the
sequence in that (processing) order, as Keras. `mask=` (batch, time) booleans keep a
row's state and repeat its previous output on masked steps (zeros with
zero_output_for_mask). Under `@fj.jit` a new sequence length reuses the compiled loop.
"""
import numpy as np

import flowjit as fj
from .. import activations, initializers
from ..layer import Layer


def _loop_fn(identifier):
    """The activation for a loop body: Keras's sigmoid remembers its logits for the losses,
    which a gate never needs; the plain op instead."""
    fn = activations.get(identifier)
    if fn is getattr(activations, "sigmoid", None):
        return fj.sigmoid
    if fn is getattr(activations, "tanh", None):
        return fj.tanh
    return fn


def _rows(x, kernel):
    """x (..., n) @ kernel (n, m) as one GEMM over all the leading rows."""
    if len(x.shape) == 2:
        return fj.matmul(x, kernel)
    lead = tuple(x.shape[:-1])
    y = fj.matmul(fj.reshape(x, (-1, x.shape[-1])), kernel)
    return fj.reshape(y, lead + (kernel.shape[-1],))


def _as_list(states):
    if states is None:
        return None
    return list(states) if isinstance(states, (list, tuple)) else [states]


def _seed(seed, k):
    """Masks drawn with a given seed each get their own stream (same-seed ops share one)."""
    return None if seed is None else int(seed) + 7919 * k


class _Cell(Layer):
    """A recurrent cell's weights and one step. `call(inputs, states, training)` is Keras's
    cell API (one step, returns (output, new states)); the RNN layers use `_project` for
    all steps at once and `_step` inside the loop."""
    gates = 1

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", kernel_regularizer=None, recurrent_regularizer=None,
                 bias_regularizer=None, kernel_constraint=None, recurrent_constraint=None, bias_constraint=None,
                 dropout=0.0, recurrent_dropout=0.0, seed=None, implementation=2, **kwargs):
        if int(units) <= 0:
            raise ValueError(f"Received an invalid value for argument `units`, expected a positive integer, "
                             f"got {units}.")
        super().__init__(**kwargs)
        self.units = int(units)
        self.activation = activations.get(activation)
        self.recurrent_activation = activations.get(recurrent_activation)
        self._act, self._rec_act = _loop_fn(activation), _loop_fn(recurrent_activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.recurrent_initializer = initializers.get(recurrent_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer, self.recurrent_regularizer = kernel_regularizer, recurrent_regularizer
        self.bias_regularizer = bias_regularizer
        self.kernel_constraint, self.recurrent_constraint = kernel_constraint, recurrent_constraint
        self.bias_constraint = bias_constraint
        self.dropout = min(1.0, max(0.0, float(dropout)))
        self.recurrent_dropout = min(1.0, max(0.0, float(recurrent_dropout)))
        self.seed = seed
        self.implementation = 1 if self.recurrent_dropout != 0.0 else int(implementation)

    state_size = property(lambda self: self.units)
    output_size = property(lambda self: self.units)

    def _bias_shape(self):
        return (self.gates * self.units,)

    def _bias_init(self):
        return self.bias_initializer

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(f"{type(self).__name__} {self.name}: the last dimension of the input (its "
                             f"features) must be known, got shape {tuple(input_shape)}")
        n = self.gates * self.units
        self.kernel = self.add_weight((input_dim, n), self.kernel_initializer, regularizer=self.kernel_regularizer,
                                      constraint=self.kernel_constraint, name="kernel")
        self.recurrent_kernel = self.add_weight((self.units, n), self.recurrent_initializer,
                                                regularizer=self.recurrent_regularizer,
                                                constraint=self.recurrent_constraint, name="recurrent_kernel")
        self.bias = self.add_weight(self._bias_shape(), self._bias_init(), regularizer=self.bias_regularizer,
                                    constraint=self.bias_constraint, name="bias") if self.use_bias else None

    # --- the pieces the layers run ---------------------------------------------------
    def _read(self):
        """The weights as tensors, read once outside the loop."""
        return {"kernel": self.kernel.read_value(), "recurrent_kernel": self.recurrent_kernel.read_value(),
                "bias": None if self.bias is None else self.bias.read_value()}

    def _masks(self, like, rate, training, offset):
        """Dropout masks (scaled by 1/(1 - rate)) of like's shape, or None: one, or one per
        gate in implementation 1."""
        if not (training and 0.0 < rate < 1.0):
            return None
        n = self.gates if self.implementation == 1 else 1
        ones = fj.ones_like(like)
        return [fj.nn.dropout(ones, rate, seed=_seed(self.seed, offset + k)) for k in range(n)]

    def dropout_masks(self, step_input, state, training):
        return (self._masks(step_input, self.dropout, training, 0),
                self._masks(state, self.recurrent_dropout, training, self.gates))

    def _input_bias(self, w):
        return w["bias"]

    def _project(self, x, w, masks):
        """x @ kernel + input bias over x's leading dims (all time steps at once)."""
        k = w["kernel"]
        if masks is None:
            z = _rows(x, k)
        elif len(masks) == 1:
            z = _rows(x * masks[0], k)
        else:
            u = self.units
            z = fj.concat([_rows(x * m, k[:, g * u:(g + 1) * u]) for g, m in enumerate(masks)], axis=-1)
        b = self._input_bias(w)
        return z if b is None else z + b

    def _recurrent(self, h, r, masks):
        """h @ recurrent_kernel (r), per gate with its own mask in implementation 1."""
        if masks is None:
            return fj.matmul(h, r)
        if len(masks) == 1:
            return fj.matmul(h * masks[0], r)
        u = self.units
        return fj.concat([fj.matmul(h * m, r[:, g * u:(g + 1) * u]) for g, m in enumerate(masks)], axis=1)

    def _step(self, z, states, w, rec_masks):
        raise NotImplementedError

    def call(self, inputs, states, training=None):
        states = _as_list(states)
        w = self._read()
        in_masks, rec_masks = self.dropout_masks(inputs, states[0], training)
        h, new = self._step(self._project(inputs, w, in_masks), tuple(states), w, rec_masks)
        return h, list(new)

    def get_initial_state(self, batch_size=None):
        return [fj.zeros((batch_size, self.units), self.dtype_policy) for _ in range(self._n_states)]

    _n_states = 1


class SimpleRNNCell(_Cell):
    gates = 1

    def __init__(self, units, activation="tanh", use_bias=True, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros", kernel_regularizer=None,
                 recurrent_regularizer=None, bias_regularizer=None, kernel_constraint=None,
                 recurrent_constraint=None, bias_constraint=None, dropout=0.0, recurrent_dropout=0.0, seed=None,
                 **kwargs):
        super().__init__(units, activation=activation, recurrent_activation=None, use_bias=use_bias,
                         kernel_initializer=kernel_initializer, recurrent_initializer=recurrent_initializer,
                         bias_initializer=bias_initializer, kernel_regularizer=kernel_regularizer,
                         recurrent_regularizer=recurrent_regularizer, bias_regularizer=bias_regularizer,
                         kernel_constraint=kernel_constraint, recurrent_constraint=recurrent_constraint,
                         bias_constraint=bias_constraint, dropout=dropout, recurrent_dropout=recurrent_dropout,
                         seed=seed, **kwargs)
        self.implementation = 2

    def _step(self, z, states, w, rec_masks):
        h = self._act(z + self._recurrent(states[0], w["recurrent_kernel"], rec_masks))
        return h, (h,)


class LSTMCell(_Cell):
    gates = 4
    _n_states = 2

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal", bias_initializer="zeros",
                 unit_forget_bias=True, kernel_regularizer=None, recurrent_regularizer=None,
                 bias_regularizer=None, kernel_constraint=None, recurrent_constraint=None, bias_constraint=None,
                 dropout=0.0, recurrent_dropout=0.0, seed=None, **kwargs):
        super().__init__(units, activation=activation, recurrent_activation=recurrent_activation,
                         use_bias=use_bias, kernel_initializer=kernel_initializer,
                         recurrent_initializer=recurrent_initializer, bias_initializer=bias_initializer,
                         kernel_regularizer=kernel_regularizer, recurrent_regularizer=recurrent_regularizer,
                         bias_regularizer=bias_regularizer, kernel_constraint=kernel_constraint,
                         recurrent_constraint=recurrent_constraint, bias_constraint=bias_constraint,
                         dropout=dropout, recurrent_dropout=recurrent_dropout, seed=seed, **kwargs)
        self.unit_forget_bias = bool(unit_forget_bias)

    state_size = property(lambda self: [self.units, self.units])

    def _bias_init(self):
        if not self.unit_forget_bias:
            return self.bias_initializer
        u, base = self.units, self.bias_initializer

        def init(shape, dtype=None):
            parts = [base((u,), dtype=dtype), initializers.get("ones")((u,), dtype=dtype), base((2 * u,), dtype=dtype)]
            return np.concatenate([np.asarray(p.numpy() if hasattr(p, "numpy") else p) for p in parts])
        return init

    def _step(self, z, states, w, rec_masks):
        h, c = states
        i, f, g, o = fj.split(z + self._recurrent(h, w["recurrent_kernel"], rec_masks), 4, axis=1)
        ra = self._rec_act
        c = ra(f) * c + ra(i) * self._act(g)
        h = ra(o) * self._act(c)
        return h, (h, c)


class GRUCell(_Cell):
    gates = 3

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal", bias_initializer="zeros",
                 kernel_regularizer=None, recurrent_regularizer=None, bias_regularizer=None,
                 kernel_constraint=None, recurrent_constraint=None, bias_constraint=None, dropout=0.0,
                 recurrent_dropout=0.0, reset_after=True, seed=None, **kwargs):
        super().__init__(units, activation=activation, recurrent_activation=recurrent_activation,
                         use_bias=use_bias, kernel_initializer=kernel_initializer,
                         recurrent_initializer=recurrent_initializer, bias_initializer=bias_initializer,
                         kernel_regularizer=kernel_regularizer, recurrent_regularizer=recurrent_regularizer,
                         bias_regularizer=bias_regularizer, kernel_constraint=kernel_constraint,
                         recurrent_constraint=recurrent_constraint, bias_constraint=bias_constraint,
                         dropout=dropout, recurrent_dropout=recurrent_dropout, seed=seed, **kwargs)
        self.reset_after = bool(reset_after)

    def _bias_shape(self):
        return (2, 3 * self.units) if self.reset_after else (3 * self.units,)

    def _read(self):
        w = super()._read()
        b = w["bias"]
        # reset_after: row 0 the input bias (added before the loop), row 1 the recurrent one
        w["input_bias"], w["recurrent_bias"] = (b[0], b[1]) if b is not None and self.reset_after else (b, None)
        return w

    def _input_bias(self, w):
        return w["input_bias"]

    def _step(self, z, states, w, rec_masks):
        h = states[0]
        u, r_k, b = self.units, w["recurrent_kernel"], w["recurrent_bias"]
        ra = self._rec_act
        x_z, x_r, x_h = z[:, :u], z[:, u:2 * u], z[:, 2 * u:]
        masks = rec_masks           # None, or one per gate: recurrent dropout is implementation 1
        hz, hr, hh_in = (h,) * 3 if masks is None else (h * masks[min(g, len(masks) - 1)] for g in range(3))
        if self.reset_after:
            if masks is None:
                inner = fj.matmul(hz, r_k)
                if b is not None:
                    inner = inner + b
                rec_z, rec_r, rec_h = inner[:, :u], inner[:, u:2 * u], inner[:, 2 * u:]
            else:
                rec_z, rec_r, rec_h = (fj.matmul(a, r_k[:, g * u:(g + 1) * u]) for g, a in enumerate((hz, hr, hh_in)))
                if b is not None:
                    rec_z, rec_r, rec_h = rec_z + b[:u], rec_r + b[u:2 * u], rec_h + b[2 * u:]
            zg, r = ra(x_z + rec_z), ra(x_r + rec_r)
            hh = self._act(x_h + r * rec_h)
        else:
            if masks is None:
                inner = fj.matmul(hz, r_k[:, :2 * u])
                rec_z, rec_r = inner[:, :u], inner[:, u:]
            else:
                rec_z, rec_r = fj.matmul(hz, r_k[:, :u]), fj.matmul(hr, r_k[:, u:2 * u])
            zg, r = ra(x_z + rec_z), ra(x_r + rec_r)
            hh = self._act(x_h + fj.matmul(r * hh_in, r_k[:, 2 * u:]))
        h = zg * h + (1.0 - zg) * hh
        return h, (h,)


class _RNN(Layer):
    """The loop shared by SimpleRNN, LSTM and GRU over a cell's `_project` and `_step`."""

    def __init__(self, cell, return_sequences=False, return_state=False, go_backwards=False, stateful=False,
                 unroll=False, zero_output_for_mask=False, activity_regularizer=None, **kwargs):
        if stateful:
            raise ValueError(f"{type(self).__name__}(stateful=True) is not supported by flowjit's Keras: pass "
                             f"the last states back as initial_state= instead")
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.cell = cell
        self.return_sequences, self.return_state = bool(return_sequences), bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.stateful = False
        self.unroll = bool(unroll)        # the compiled loop computes the same values either way
        self.zero_output_for_mask = bool(zero_output_for_mask)

    def build(self, sequences_shape, initial_state_shape=None):
        if sequences_shape is None or len(sequences_shape) != 3:
            raise ValueError(f"{type(self).__name__} {self.name}: expected an input of shape (batch, time, "
                             f"features), got {sequences_shape}")
        if not self.cell.built:
            self.cell.build((sequences_shape[0], sequences_shape[-1]))
            self.cell.built = True
            for w in self.cell._own_weights:             # Keras's path: lstm/lstm_cell/kernel
                w._name = f"{self.name}/{w._name}"

    @property
    def state_size(self):
        return self.cell.state_size

    def get_initial_state(self, batch_size):
        return self.cell.get_initial_state(batch_size)

    def _initial(self, initial_state, batch):
        n = self.cell._n_states
        if initial_state is None:
            zero = fj.broadcast_to(fj.zeros((), self.dtype_policy), (batch, self.cell.units))
            return (zero,) * n
        states = _as_list(initial_state)
        if len(states) != n:
            raise ValueError(f"{type(self).__name__} {self.name}: initial_state needs {n} tensor(s) of shape "
                             f"(batch, {self.cell.units}), got {len(states)}")
        out = []
        for s in states:
            s = s if isinstance(s, fj.Tensor) else fj.convert_to_tensor(s.read_value() if hasattr(s, "read_value") else s)
            if s.dtype is not self.dtype_policy and s.dtype.is_floating:
                s = fj.cast(s, self.dtype_policy)
            if len(s.shape) != 2:
                raise ValueError(f"{type(self).__name__} {self.name}: each initial state must be (batch, "
                                 f"{self.cell.units}), got shape {tuple(s.shape)}")
            out.append(s)
        return tuple(out)

    def call(self, sequences, initial_state=None, mask=None, training=None):
        x = sequences
        if len(x.shape) != 3:
            raise ValueError(f"{type(self).__name__} {self.name}: expected an input of shape (batch, time, "
                             f"features), got shape {tuple(x.shape)}")
        cell = self.cell
        states = self._initial(initial_state, x.shape[0])
        w = cell._read()
        xs = fj.transpose(x, (1, 0, 2))                       # time-major (time, batch, features)
        in_masks, rec_masks = cell.dropout_masks(xs[0], states[0], bool(training))
        proj = cell._project(xs, w, in_masks)                 # every step's input share: one GEMM
        zero_out = self.zero_output_for_mask
        if mask is not None:
            m = mask if isinstance(mask, fj.Tensor) else fj.convert_to_tensor(np.asarray(mask))
            if m.dtype is not fj.bool:
                m = fj.cast(m, fj.bool)
            if len(m.shape) != 2:
                raise ValueError(f"{type(self).__name__} {self.name}: mask must be (batch, time) booleans, "
                                 f"got shape {tuple(m.shape)}")
            m_t = fj.expand_dims(fj.transpose(m, (1, 0)), 2)  # (time, batch, 1)
        keep_ys = self.return_sequences

        def body(carry, inp):
            if mask is None:
                h, new = cell._step(inp, carry, w, rec_masks)
                out = h
            else:
                z_t, live = inp
                h, new = cell._step(z_t, carry, w, rec_masks)
                new = tuple(fj.where(live, a, b) for a, b in zip(new, carry))
                out = fj.where(live, h, fj.zeros_like(h) if zero_out else carry[0])
            return new, (out if keep_ys else None)
        final, ys = fj.scan(body, states, proj if mask is None else (proj, m_t), reverse=self.go_backwards)
        final = tuple(final)
        if self.return_sequences:
            if self.go_backwards:
                ys = ys[::-1]                                  # Keras: in processing order
            output = fj.transpose(ys, (1, 0, 2))
        else:
            output = final[0]
            if mask is not None and zero_out:                  # the last processed step was masked: zeros
                last = m_t[0] if self.go_backwards else m_t[-1]
                output = fj.where(last, output, fj.zeros_like(output))
        if self.return_state:
            return (output,) + final
        return output

    def get_config(self):
        return {**super().get_config(), **{k: v for k, v in self._init_args.items()
                                           if k not in ("name", "dtype", "trainable")}}

    def _clone(self, **overrides):
        return type(self)(**{**self._init_args, **overrides})


def _forward(name):
    return property(lambda self: getattr(self.cell, name))


for _attr in ("units", "activation", "recurrent_activation", "use_bias", "kernel_initializer",
              "recurrent_initializer", "bias_initializer", "dropout", "recurrent_dropout", "seed"):
    setattr(_RNN, _attr, _forward(_attr))


def _args(local):
    """A layer's constructor arguments (for get_config and Bidirectional's copies)."""
    out = {k: v for k, v in local.items() if k not in ("self", "kwargs", "__class__")}
    out.update(local.get("kwargs", {}))
    return out


def _cell_kwargs(kwargs):
    return {"dtype": kwargs.get("dtype"), "trainable": kwargs.get("trainable", True)}


class SimpleRNN(_RNN):
    """A fully connected RNN: h' = activation(x @ kernel + bias + h @ recurrent_kernel)."""

    def __init__(self, units, activation="tanh", use_bias=True, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros", kernel_regularizer=None,
                 recurrent_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, recurrent_constraint=None, bias_constraint=None, dropout=0.0,
                 recurrent_dropout=0.0, return_sequences=False, return_state=False, go_backwards=False,
                 stateful=False, unroll=False, seed=None, **kwargs):
        init_args = _args(locals())
        cell = SimpleRNNCell(units, activation=activation, use_bias=use_bias, kernel_initializer=kernel_initializer,
                             recurrent_initializer=recurrent_initializer, bias_initializer=bias_initializer,
                             kernel_regularizer=kernel_regularizer, recurrent_regularizer=recurrent_regularizer,
                             bias_regularizer=bias_regularizer, kernel_constraint=kernel_constraint,
                             recurrent_constraint=recurrent_constraint, bias_constraint=bias_constraint,
                             dropout=dropout, recurrent_dropout=recurrent_dropout, seed=seed,
                             name="simple_rnn_cell", **_cell_kwargs(kwargs))
        super().__init__(cell, return_sequences=return_sequences, return_state=return_state,
                         go_backwards=go_backwards, stateful=stateful, unroll=unroll,
                         activity_regularizer=activity_regularizer, **kwargs)
        self._init_args = init_args


class LSTM(_RNN):
    """Long Short-Term Memory (Hochreiter 1997), Keras 3's weights and gate order i, f, c, o.
    With return_state the outputs are [output, h, c]."""

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal", bias_initializer="zeros",
                 unit_forget_bias=True, kernel_regularizer=None, recurrent_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, recurrent_constraint=None,
                 bias_constraint=None, dropout=0.0, recurrent_dropout=0.0, seed=None, return_sequences=False,
                 return_state=False, go_backwards=False, stateful=False, unroll=False, use_cudnn="auto",
                 **kwargs):
        implementation = kwargs.pop("implementation", 2)
        init_args = _args(locals())
        cell = LSTMCell(units, activation=activation, recurrent_activation=recurrent_activation, use_bias=use_bias,
                        kernel_initializer=kernel_initializer, unit_forget_bias=unit_forget_bias,
                        recurrent_initializer=recurrent_initializer, bias_initializer=bias_initializer,
                        kernel_regularizer=kernel_regularizer, recurrent_regularizer=recurrent_regularizer,
                        bias_regularizer=bias_regularizer, kernel_constraint=kernel_constraint,
                        recurrent_constraint=recurrent_constraint, bias_constraint=bias_constraint, dropout=dropout,
                        recurrent_dropout=recurrent_dropout, seed=seed, implementation=implementation,
                        name="lstm_cell", **_cell_kwargs(kwargs))
        super().__init__(cell, return_sequences=return_sequences, return_state=return_state,
                         go_backwards=go_backwards, stateful=stateful, unroll=unroll,
                         activity_regularizer=activity_regularizer, **kwargs)
        self.use_cudnn = use_cudnn
        self._init_args = init_args

    unit_forget_bias = property(lambda self: self.cell.unit_forget_bias)


class GRU(_RNN):
    """Gated Recurrent Unit (Cho et al. 2014), Keras 3's weights and gate order z, r, h;
    reset_after=True (the default, cuDNN's variant) applies the reset gate after the
    recurrent matmul and has a (2, 3 * units) bias."""

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal", bias_initializer="zeros",
                 kernel_regularizer=None, recurrent_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, recurrent_constraint=None,
                 bias_constraint=None, dropout=0.0, recurrent_dropout=0.0, seed=None, return_sequences=False,
                 return_state=False, go_backwards=False, stateful=False, unroll=False, reset_after=True,
                 use_cudnn="auto", **kwargs):
        implementation = kwargs.pop("implementation", 2)
        init_args = _args(locals())
        cell = GRUCell(units, activation=activation, recurrent_activation=recurrent_activation, use_bias=use_bias,
                       kernel_initializer=kernel_initializer, recurrent_initializer=recurrent_initializer,
                       bias_initializer=bias_initializer, kernel_regularizer=kernel_regularizer,
                       recurrent_regularizer=recurrent_regularizer, bias_regularizer=bias_regularizer,
                       kernel_constraint=kernel_constraint, recurrent_constraint=recurrent_constraint,
                       bias_constraint=bias_constraint, dropout=dropout, recurrent_dropout=recurrent_dropout,
                       reset_after=reset_after, seed=seed, implementation=implementation, name="gru_cell",
                       **_cell_kwargs(kwargs))
        super().__init__(cell, return_sequences=return_sequences, return_state=return_state,
                         go_backwards=go_backwards, stateful=stateful, unroll=unroll,
                         activity_regularizer=activity_regularizer, **kwargs)
        self.use_cudnn = use_cudnn
        self._init_args = init_args

    reset_after = property(lambda self: self.cell.reset_after)


class Bidirectional(Layer):
    """Runs a copy of `layer` forwards (forward_<name>) and one backwards (backward_<name>,
    go_backwards=True) and merges their outputs ("concat", "sum", "mul", "ave" or None
    for a list); the backward sequence is flipped back to the input's order. Weights:
    the forward layer's, then the backward's. With return_state: [output, forward states,
    backward states]."""

    def __init__(self, layer, merge_mode="concat", weights=None, backward_layer=None, **kwargs):
        if not isinstance(layer, Layer):
            raise ValueError(f"Please initialize `Bidirectional` layer with a `keras.layers.Layer` instance. "
                             f"Received: {layer}")
        if backward_layer is not None and not isinstance(backward_layer, Layer):
            raise ValueError(f"`backward_layer` need to be a `keras.layers.Layer` instance. "
                             f"Received: {backward_layer}")
        if merge_mode not in ("sum", "mul", "ave", "concat", None):
            raise ValueError(f"Invalid merge mode. Received: {merge_mode}. Merge mode should be one of "
                             '{"sum", "mul", "ave", "concat", None}')
        if not hasattr(layer, "_clone") or (backward_layer is not None and not hasattr(backward_layer, "go_backwards")):
            raise ValueError("Bidirectional wraps flowjit's SimpleRNN, LSTM or GRU layers, "
                             f"got {type(layer).__name__}")
        super().__init__(**kwargs)

        def strip(name, prefix):
            return name[len(prefix):] if name.startswith(prefix) else name
        self.forward_layer = layer._clone(name=f"forward_{strip(layer.name, 'forward_')}")
        if backward_layer is None:
            backward_layer = layer._clone(name=f"backward_{strip(layer.name, 'backward_')}",
                                          go_backwards=True)
        self.backward_layer = backward_layer
        fwd, bwd = self.forward_layer, self.backward_layer
        if fwd.go_backwards == bwd.go_backwards:
            raise ValueError("Forward layer and backward layer should have different `go_backwards` value. "
                             f"Received: forward_layer.go_backwards {fwd.go_backwards}, "
                             f"backward_layer.go_backwards={bwd.go_backwards}")
        for a in ("stateful", "return_sequences", "return_state"):
            if getattr(fwd, a) != getattr(bwd, a):
                raise ValueError(f'Forward layer and backward layer are expected to have the same value for '
                                 f'attribute "{a}", got "{getattr(fwd, a)}" for forward layer and '
                                 f'"{getattr(bwd, a)}" for backward layer')
        for sub in (fwd, bwd):     # Keras: masked steps of a returned sequence are zeros
            sub.zero_output_for_mask = sub.return_sequences
        self.merge_mode = merge_mode
        self.return_sequences, self.return_state = fwd.return_sequences, fwd.return_state
        self.stateful = False
        self._initial_weights = weights

    def build(self, sequences_shape, initial_state_shape=None):
        for sub in (self.forward_layer, self.backward_layer):
            if not sub.built:
                sub.build(sequences_shape)
                sub.built = True
        if self._initial_weights:
            n = len(self._initial_weights)
            self.forward_layer.set_weights(self._initial_weights[:n // 2])
            self.backward_layer.set_weights(self._initial_weights[n // 2:])
            self._initial_weights = None

    def call(self, sequences, initial_state=None, mask=None, training=None):
        kw = {} if mask is None else {"mask": mask}
        fwd_state = bwd_state = None
        if initial_state is not None:
            states = _as_list(initial_state)
            half = len(states) // 2
            fwd_state, bwd_state = states[:half], states[half:]
        y = self.forward_layer(sequences, initial_state=fwd_state, training=training, **kw)
        y_rev = self.backward_layer(sequences, initial_state=bwd_state, training=training, **kw)
        states = ()
        if self.return_state:
            states = tuple(y[1:]) + tuple(y_rev[1:])
            y, y_rev = y[0], y_rev[0]
        if self.return_sequences:
            y_rev = y_rev[:, ::-1]
        if self.merge_mode == "concat":
            output = fj.concat([y, y_rev], axis=-1)
        elif self.merge_mode == "sum":
            output = y + y_rev
        elif self.merge_mode == "ave":
            output = (y + y_rev) / 2
        elif self.merge_mode == "mul":
            output = y * y_rev
        else:
            output = [y, y_rev]
        if self.return_state:
            return (tuple(output) if self.merge_mode is None else (output,)) + states
        return output

    def get_config(self):
        return {**super().get_config(), "merge_mode": self.merge_mode,
                "layer": {"class_name": type(self.forward_layer).__name__,
                          "config": self.forward_layer.get_config()}}
