"""`tf.nn.rnn_cell` (also `tf.contrib.rnn`): TF1's RNN cells with TF1's variable names,
shapes, default initializers and gate formulas.

A cell is called as `output, new_state = cell(inputs, state)`. On its first call it
takes a variable scope (its snake-case class name, made unique in the enclosing scope:
`rnn/basic_lstm_cell`, or `scope=` when given) and creates its weights there with
`tf.get_variable` (so they are ordinary graph variables: the enclosing scope's
initializer and reuse apply); later calls reuse them. Weights take the inputs' dtype.

Layouts (x: inputs [batch, n], h: state [batch, units]):
- BasicRNNCell: `basic_rnn_cell/kernel` (n+units, units), `/bias` (units,) zeros;
  h' = activation(concat([x, h], 1) @ kernel + bias) is both output and state.
- BasicLSTMCell: `basic_lstm_cell/kernel` (n+units, 4*units), `/bias` (4*units,) zeros;
  i, j, f, o = split(concat([x, h], 1) @ kernel + bias, 4, axis=1);
  c' = c*sigmoid(f + forget_bias) + sigmoid(i)*activation(j); h' = activation(c')*sigmoid(o);
  state LSTMStateTuple(c', h') (or concat([c', h'], 1) with state_is_tuple=False).
- LSTMCell: `lstm_cell/kernel` (n+p, 4*units) with p = num_proj or units, `/bias`; the same
  gates, plus peepholes (`w_f_diag`, `w_i_diag`, `w_o_diag`), cell_clip, and a projection
  `projection/kernel` (units, num_proj) of the output (proj_clip).
- GRUCell: `gru_cell/gates/kernel` (n+units, 2*units), `gates/bias` (ones),
  `candidate/kernel` (n+units, units), `candidate/bias` (zeros);
  r, u = split(sigmoid(concat([x, h], 1) @ Wg + bg), 2, axis=1);
  c = activation(concat([x, r*h], 1) @ Wc + bc); h' = u*h + (1-u)*c.
- MultiRNNCell: the cells one above the other in scopes `multi_rnn_cell/cell_<k>`; state a
  tuple of the cells' states.
- DropoutWrapper: dropout on the cell's inputs, outputs and new state (an LSTM state's h
  only), a fresh mask per call (per time step inside tf.nn.dynamic_rnn).
"""
import collections
import numbers
import re

import numpy as np

from ... import dtypes as D
from ...frontend import api as F
from .control_flow import _sequence_like, flatten, is_sequence, map_structure, pack_sequence_as
from .errors import UnimplementedError
from .graph import Dimension, Tensor, TensorShape, get_default_graph
from . import ops as O
from .scopes import constant_initializer, get_variable, variable_scope, zeros_initializer

_WEIGHTS = "kernel"
_BIAS = "bias"


class LSTMStateTuple(collections.namedtuple("LSTMStateTuple", ("c", "h"))):
    """(c, h): an LSTM cell's memory and output state."""
    __slots__ = ()

    @property
    def dtype(self):
        c, h = self
        if c.dtype is not h.dtype:
            raise TypeError(f"Inconsistent internal state: {c.dtype.name} vs {h.dtype.name}")
        return c.dtype


def _snake(name):
    s = re.sub(r"(.)([A-Z][a-z0-9]+)", r"\1_\2", name)
    s = re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()
    return s if s[0] != "_" else "private" + s


# --- zero states -----------------------------------------------------------------------------
def _size_dims(size):
    if isinstance(size, TensorShape):
        return size.as_list()
    if isinstance(size, Dimension):
        return [size.value]
    if isinstance(size, (list, tuple)):
        return [int(d) for d in size]
    return [int(size)]


def _batch_of(batch_size):
    """The batch size as an int, or (tensor x, axis k) when it is `tf.shape(x)[k]`."""
    if isinstance(batch_size, Tensor):
        op = batch_size.op
        if op.type == "Const":
            return int(op.attrs["value"])
        key = op.attrs.get("key")
        if op.type == "StridedSlice" and isinstance(key, (int, np.integer)) \
                and op.inputs[0].op.type == "Shape":
            x = op.inputs[0].op.inputs[0]
            if x.shape.ndims is not None and x.shape[int(key)].value is not None:
                return x.shape[int(key)].value
            return (x, int(key))
        raise UnimplementedError(
            f"zero_state: batch_size {batch_size.name} is computed by the graph; flowjit.compat.v1 "
            f"needs a Python int or a size of a tensor (tf.shape(x)[0]), because an array's "
            f"shape cannot depend on a tensor's value")
    if isinstance(batch_size, Dimension):
        batch_size = batch_size.value
    if batch_size is None:
        raise ValueError("zero_state: the batch size is unknown")
    return int(batch_size)


def _zeros(batch, size, dtype):
    dims = _size_dims(size)
    dt = D.as_dtype(dtype)
    if isinstance(batch, tuple):
        x, k = batch
        return O.apply("Fill", lambda v: F.zeros((v.shape[k],) + tuple(dims), dt), (x,),
                       default_name="zeros")
    return O.zeros([batch] + dims, dt)


# --- the cell base classes ------------------------------------------------------------------------
class RNNCell:
    """TF1's abstract RNN cell: `state_size`, `output_size`, `zero_state(batch_size, dtype)`,
    `__call__(inputs, state, scope=None) -> (output, new_state)`; subclasses implement
    `build(inputs_shape)` (create weights with `add_variable`) and `call(inputs, state)`."""

    def __init__(self, trainable=True, name=None, dtype=None, _reuse=None, **kwargs):
        self._name = name
        self._dtype = None if dtype is None else D.as_dtype(dtype)
        self._reuse = _reuse
        self._scope = None
        self.built = False
        self.trainable = trainable
        self._cell_variables = []

    @property
    def name(self):
        return self._scope.name if self._scope is not None else (self._name or _snake(type(self).__name__))

    @property
    def dtype(self):
        return self._dtype

    @property
    def scope_name(self):
        return self._scope.name if self._scope is not None else None

    @property
    def state_size(self):
        raise NotImplementedError("Abstract method")

    @property
    def output_size(self):
        raise NotImplementedError("Abstract method")

    def build(self, inputs_shape):
        pass

    def call(self, inputs, state):
        raise NotImplementedError("Abstract method")

    # -- weights ------------------------------------------------------------------------------
    def add_variable(self, name, shape=None, dtype=None, initializer=None, trainable=None, **kwargs):
        v = get_variable(name, shape, dtype or self._dtype or D.float32, initializer,
                         trainable=self.trainable if trainable is None else trainable)
        self._cell_variables.append(v)
        return v

    add_weight = add_variable

    @property
    def variables(self):
        return list(self._cell_variables) + [v for c in self._sub_cells() for v in c.variables]

    weights = variables

    @property
    def trainable_variables(self):
        return [v for v in self.variables if v.trainable]

    trainable_weights = trainable_variables

    def _sub_cells(self):
        return []

    # -- calling ------------------------------------------------------------------------------
    def _set_scope(self, scope):
        if self._scope is not None:
            return
        if scope is not None:
            with variable_scope(scope, reuse=self._reuse) as s:
                self._scope = s
        elif self._reuse:
            with variable_scope(self._name or _snake(type(self).__name__), reuse=True) as s:
                self._scope = s
        else:
            with variable_scope(None, default_name=self._name or _snake(type(self).__name__)) as s:
                self._scope = s

    def __call__(self, inputs, state, scope=None):
        if not hasattr(self, "_cell_variables"):       # a subclass that skipped __init__
            RNNCell.__init__(self)
        self._set_scope(scope)
        with variable_scope(self._scope, reuse=self._reuse or None):
            if not self.built:
                leaves = [O.convert_to_tensor(x) for x in flatten(inputs)]
                if self._dtype is None and leaves:
                    self._dtype = leaves[0].dtype
                shape = leaves[0].shape if len(leaves) == 1 else [x.shape for x in leaves]
                self.build(shape)
                self.built = True
            return self.call(inputs, state)

    def zero_state(self, batch_size, dtype):
        """Zeros of shape [batch_size] + size for each leaf of state_size. batch_size is an
        int, or tf.shape(x)[k] (the zeros then take x's size at run time)."""
        batch = _batch_of(batch_size)
        g = get_default_graph()
        with g.name_scope(type(self).__name__ + "ZeroState"):
            return map_structure(lambda s: _zeros(batch, s, dtype), self.state_size)

    def get_initial_state(self, inputs=None, batch_size=None, dtype=None):
        if inputs is not None:
            x = O.convert_to_tensor(flatten(inputs)[0])
            batch_size = x.shape[0].value if x.shape[0].value is not None else O.shape(x)[0]
            dtype = dtype or x.dtype
        return self.zero_state(batch_size, dtype)


LayerRNNCell = RNNCell


def _input_depth(inputs_shape, cls):
    shape = inputs_shape if isinstance(inputs_shape, TensorShape) else TensorShape(inputs_shape)
    if shape.ndims is None or shape[-1].value is None:
        raise ValueError(f"{cls}: expected inputs.shape[-1] to be known, saw shape: {shape}")
    return shape[-1].value


def _bias_add(x, b):
    return O.apply("BiasAdd", lambda v, c: v + c, (x, b))


class BasicRNNCell(RNNCell):
    """output = new_state = activation(concat([inputs, state], 1) @ kernel + bias)."""

    def __init__(self, num_units, activation=None, reuse=None, name=None, dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype, _reuse=reuse, **kwargs)
        self._num_units = int(num_units)
        self._activation = activation or O.tanh

    @property
    def state_size(self):
        return self._num_units

    @property
    def output_size(self):
        return self._num_units

    def build(self, inputs_shape):
        depth = _input_depth(inputs_shape, "BasicRNNCell")
        self._kernel = self.add_variable(_WEIGHTS, [depth + self._num_units, self._num_units])
        self._bias = self.add_variable(_BIAS, [self._num_units],
                                       initializer=zeros_initializer(dtype=self._dtype))

    def call(self, inputs, state):
        gate_inputs = O.matmul(O.concat([inputs, state], 1), self._kernel)
        output = self._activation(_bias_add(gate_inputs, self._bias))
        return output, output


class BasicLSTMCell(RNNCell):
    """The LSTM of Zaremba et al. 2014 (no peepholes, no clipping, no projection); the
    forget gate's bias gets forget_bias added."""

    def __init__(self, num_units, forget_bias=1.0, state_is_tuple=True, activation=None, reuse=None,
                 name=None, dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype, _reuse=reuse, **kwargs)
        self._num_units = int(num_units)
        self._forget_bias = forget_bias
        self._state_is_tuple = state_is_tuple
        self._activation = activation or O.tanh

    @property
    def state_size(self):
        return (LSTMStateTuple(self._num_units, self._num_units) if self._state_is_tuple
                else 2 * self._num_units)

    @property
    def output_size(self):
        return self._num_units

    def build(self, inputs_shape):
        depth = _input_depth(inputs_shape, "BasicLSTMCell")
        self._kernel = self.add_variable(_WEIGHTS, [depth + self._num_units, 4 * self._num_units])
        self._bias = self.add_variable(_BIAS, [4 * self._num_units],
                                       initializer=zeros_initializer(dtype=self._dtype))

    def call(self, inputs, state):
        if self._state_is_tuple:
            c, h = state
        else:
            c, h = O.split(state, 2, axis=1)
        gate_inputs = _bias_add(O.matmul(O.concat([inputs, h], 1), self._kernel), self._bias)
        i, j, f, o = O.split(gate_inputs, 4, axis=1)
        forget_bias = O.constant(self._forget_bias, dtype=f.dtype)
        new_c = O.add(O.multiply(c, O.sigmoid(O.add(f, forget_bias))),
                      O.multiply(O.sigmoid(i), self._activation(j)))
        new_h = O.multiply(self._activation(new_c), O.sigmoid(o))
        new_state = LSTMStateTuple(new_c, new_h) if self._state_is_tuple else O.concat([new_c, new_h], 1)
        return new_h, new_state


class LSTMCell(RNNCell):
    """TF1's LSTMCell: BasicLSTMCell's gates (same kernel layout and gate order) with
    optional peepholes (use_peepholes), cell clipping (cell_clip), an output projection
    (num_proj, proj_clip) and a kernel initializer."""

    def __init__(self, num_units, use_peepholes=False, cell_clip=None, initializer=None, num_proj=None,
                 proj_clip=None, num_unit_shards=None, num_proj_shards=None, forget_bias=1.0,
                 state_is_tuple=True, activation=None, reuse=None, name=None, dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype, _reuse=reuse, **kwargs)
        if num_unit_shards is not None or num_proj_shards is not None:
            raise UnimplementedError("LSTMCell: num_unit_shards and num_proj_shards (deprecated in TF1) "
                                     "are not supported")
        self._num_units = int(num_units)
        self._use_peepholes = use_peepholes
        self._cell_clip = cell_clip
        self._initializer = initializer
        self._num_proj = None if num_proj is None else int(num_proj)
        self._proj_clip = proj_clip
        self._forget_bias = forget_bias
        self._state_is_tuple = state_is_tuple
        self._activation = activation or O.tanh

    @property
    def state_size(self):
        p = self._num_proj or self._num_units
        return LSTMStateTuple(self._num_units, p) if self._state_is_tuple else self._num_units + p

    @property
    def output_size(self):
        return self._num_proj or self._num_units

    def build(self, inputs_shape):
        depth = _input_depth(inputs_shape, "LSTMCell")
        h_depth = self._num_proj or self._num_units
        self._kernel = self.add_variable(_WEIGHTS, [depth + h_depth, 4 * self._num_units],
                                         initializer=self._initializer)
        self._bias = self.add_variable(_BIAS, [4 * self._num_units],
                                       initializer=zeros_initializer(dtype=self._dtype))
        if self._use_peepholes:
            self._w_f_diag = self.add_variable("w_f_diag", [self._num_units], initializer=self._initializer)
            self._w_i_diag = self.add_variable("w_i_diag", [self._num_units], initializer=self._initializer)
            self._w_o_diag = self.add_variable("w_o_diag", [self._num_units], initializer=self._initializer)
        if self._num_proj is not None:
            self._proj_kernel = self.add_variable(f"projection/{_WEIGHTS}", [self._num_units, self._num_proj],
                                                  initializer=self._initializer)

    def call(self, inputs, state):
        num_proj = self._num_proj or self._num_units
        if self._state_is_tuple:
            c_prev, m_prev = state
        else:
            c_prev, m_prev = O.split(state, [self._num_units, num_proj], axis=1)
        lstm_matrix = _bias_add(O.matmul(O.concat([inputs, m_prev], 1), self._kernel), self._bias)
        i, j, f, o = O.split(lstm_matrix, 4, axis=1)
        sig = O.sigmoid
        if self._use_peepholes:
            c = (sig(f + self._forget_bias + self._w_f_diag * c_prev) * c_prev +
                 sig(i + self._w_i_diag * c_prev) * self._activation(j))
        else:
            c = sig(f + self._forget_bias) * c_prev + sig(i) * self._activation(j)
        if self._cell_clip is not None:
            c = O.clip_by_value(c, -self._cell_clip, self._cell_clip)
        if self._use_peepholes:
            m = sig(o + self._w_o_diag * c) * self._activation(c)
        else:
            m = sig(o) * self._activation(c)
        if self._num_proj is not None:
            m = O.matmul(m, self._proj_kernel)
            if self._proj_clip is not None:
                m = O.clip_by_value(m, -self._proj_clip, self._proj_clip)
        new_state = LSTMStateTuple(c, m) if self._state_is_tuple else O.concat([c, m], 1)
        return m, new_state


class GRUCell(RNNCell):
    """Cho et al. 2014's GRU, TF1's layout (reset and update gates in one kernel)."""

    def __init__(self, num_units, activation=None, reuse=None, kernel_initializer=None,
                 bias_initializer=None, name=None, dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype, _reuse=reuse, **kwargs)
        self._num_units = int(num_units)
        self._activation = activation or O.tanh
        self._kernel_initializer = kernel_initializer
        self._bias_initializer = bias_initializer

    @property
    def state_size(self):
        return self._num_units

    @property
    def output_size(self):
        return self._num_units

    def build(self, inputs_shape):
        depth = _input_depth(inputs_shape, "GRUCell")
        n = self._num_units
        self._gate_kernel = self.add_variable(f"gates/{_WEIGHTS}", [depth + n, 2 * n],
                                              initializer=self._kernel_initializer)
        self._gate_bias = self.add_variable(
            f"gates/{_BIAS}", [2 * n], initializer=self._bias_initializer if self._bias_initializer
            is not None else constant_initializer(1.0, dtype=self._dtype))
        self._candidate_kernel = self.add_variable(f"candidate/{_WEIGHTS}", [depth + n, n],
                                                   initializer=self._kernel_initializer)
        self._candidate_bias = self.add_variable(
            f"candidate/{_BIAS}", [n], initializer=self._bias_initializer if self._bias_initializer
            is not None else zeros_initializer(dtype=self._dtype))

    def call(self, inputs, state):
        gate_inputs = _bias_add(O.matmul(O.concat([inputs, state], 1), self._gate_kernel), self._gate_bias)
        value = O.sigmoid(gate_inputs)
        r, u = O.split(value, 2, axis=1)
        r_state = r * state
        candidate = _bias_add(O.matmul(O.concat([inputs, r_state], 1), self._candidate_kernel),
                              self._candidate_bias)
        c = self._activation(candidate)
        new_h = u * state + (1 - u) * c
        return new_h, new_h


class MultiRNNCell(RNNCell):
    """Cells stacked: cell k's output is cell k+1's input; scopes `cell_<k>`."""

    def __init__(self, cells, state_is_tuple=True):
        super().__init__()
        if not cells:
            raise ValueError("Must specify at least one cell for MultiRNNCell.")
        if not is_sequence(cells):
            raise TypeError(f"cells must be a list or tuple, but saw: {cells}.")
        self._cells = list(cells)
        self._state_is_tuple = state_is_tuple
        if not state_is_tuple and any(is_sequence(c.state_size) for c in self._cells):
            raise ValueError("Some cells return tuples of states, but the flag state_is_tuple is not "
                             "set.  State sizes are: %s" % str([c.state_size for c in self._cells]))

    @property
    def state_size(self):
        if self._state_is_tuple:
            return tuple(c.state_size for c in self._cells)
        return sum(c.state_size for c in self._cells)

    @property
    def output_size(self):
        return self._cells[-1].output_size

    def _sub_cells(self):
        return list(self._cells)

    def zero_state(self, batch_size, dtype):
        if self._state_is_tuple:
            g = get_default_graph()
            with g.name_scope(type(self).__name__ + "ZeroState"):
                return tuple(c.zero_state(batch_size, dtype) for c in self._cells)
        return super().zero_state(batch_size, dtype)

    def call(self, inputs, state):
        cur_inp, new_states, pos = inputs, [], 0
        for i, cell in enumerate(self._cells):
            with variable_scope(f"cell_{i}"):
                if self._state_is_tuple:
                    if not is_sequence(state):
                        raise ValueError(f"Expected state to be a tuple of length {len(self.state_size)}, "
                                         f"but received: {state}")
                    cur_state = state[i]
                else:
                    size = cell.state_size
                    cur_state = O.apply("Slice", lambda s, a=pos, n=size: s[:, a:a + n], (state,),
                                        default_name="Slice")
                    pos += size
                cur_inp, new_state = cell(cur_inp, cur_state)
                new_states.append(new_state)
        new_states = tuple(new_states) if self._state_is_tuple else O.concat(new_states, 1)
        return cur_inp, new_states


def _default_state_filter(substate):
    if isinstance(substate, LSTMStateTuple):
        return LSTMStateTuple(c=False, h=True)      # no dropout on the memory
    return True


def _keep(p):
    """Does keep probability p drop anything? (Numbers >= 1 keep everything; a tensor may.)"""
    return not (isinstance(p, numbers.Real) and not isinstance(p, bool) and p >= 1)


class DropoutWrapper(RNNCell):
    """Dropout on a cell's inputs, outputs and new state (TF1's DropoutWrapper without
    variational_recurrent): a fresh mask each call, i.e. each time step. By default an
    LSTMStateTuple's c is left alone and its h dropped. The wrapper adds no variable
    scope: the cell's variables keep their names."""

    def __init__(self, cell, input_keep_prob=1.0, output_keep_prob=1.0, state_keep_prob=1.0,
                 variational_recurrent=False, input_size=None, dtype=None, seed=None,
                 dropout_state_filter_visitor=None):
        super().__init__()
        if variational_recurrent:
            raise UnimplementedError("DropoutWrapper(variational_recurrent=True) is not supported by "
                                     "flowjit.compat.v1 yet; use the default per-step masks")
        if dropout_state_filter_visitor is not None and not callable(dropout_state_filter_visitor):
            raise TypeError("dropout_state_filter_visitor must be callable")
        for what, p in (("input_keep_prob", input_keep_prob), ("state_keep_prob", state_keep_prob),
                        ("output_keep_prob", output_keep_prob)):
            if isinstance(p, numbers.Real) and not 0 < p <= 1:
                raise ValueError(f"Parameter {what} must be between 0 and 1: {p}")
        self._cell = cell
        self._input_keep_prob = input_keep_prob
        self._output_keep_prob = output_keep_prob
        self._state_keep_prob = state_keep_prob
        self._seed = seed
        self._visitor = dropout_state_filter_visitor

    @property
    def wrapped_cell(self):
        return self._cell

    cell = wrapped_cell

    @property
    def state_size(self):
        return self._cell.state_size

    @property
    def output_size(self):
        return self._cell.output_size

    def _sub_cells(self):
        return [self._cell]

    def zero_state(self, batch_size, dtype):
        return self._cell.zero_state(batch_size, dtype)

    def _gen_seed(self, salt, i):
        if self._seed is None:
            return None
        import hashlib
        digest = hashlib.md5(f"{self._seed}{salt}_{i}".encode()).hexdigest()[:8]
        return int(digest, 16) & 0x7FFFFFFF

    def _dropout(self, values, salt, keep_prob):
        from .nn import dropout
        leaves = flatten(values)
        out = [dropout(v, keep_prob, seed=self._gen_seed(salt, i)) for i, v in enumerate(leaves)]
        return pack_sequence_as(values, out)

    def _state_dropout(self, s, counter):
        """TF1's traversal: the visitor says, for each substructure, whether to go into it
        (True), not (False), or per part (a structure of bools); leaves reached are dropped."""
        visitor = self._visitor or _default_state_filter
        r = visitor(s)
        if not is_sequence(s):
            return self._drop_one(s, counter) if r else s
        if r is False:
            return s
        parts = [s[k] for k in sorted(s)] if isinstance(s, dict) else list(s)
        if r is True:
            flags = [True] * len(parts)
        else:
            flags = [r[k] for k in sorted(r)] if isinstance(r, dict) else list(r)
        new = [self._state_dropout(p, counter) if f else p for p, f in zip(parts, flags)]
        return _sequence_like(s, new)

    def _drop_one(self, v, counter):
        from .nn import dropout
        counter[0] += 1
        return dropout(v, self._state_keep_prob, seed=self._gen_seed("state", counter[0] - 1))

    def __call__(self, inputs, state, scope=None):
        if _keep(self._input_keep_prob):
            inputs = self._dropout(inputs, "input", self._input_keep_prob)
        output, new_state = self._cell(inputs, state, scope=scope)
        if _keep(self._state_keep_prob):
            new_state = self._state_dropout(new_state, [0])
        if _keep(self._output_keep_prob):
            output = self._dropout(output, "output", self._output_keep_prob)
        return output, new_state


__all__ = ["RNNCell", "LayerRNNCell", "BasicRNNCell", "BasicLSTMCell", "LSTMCell", "GRUCell",
           "MultiRNNCell", "DropoutWrapper", "LSTMStateTuple"]
