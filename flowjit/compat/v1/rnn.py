"""`tf.nn.dynamic_rnn`, `tf.nn.static_rnn`, `tf.nn.bidirectional_dynamic_rnn`,
`tf.nn.static_bidirectional_rnn`, and `tf.reverse` / `tf.reverse_sequence`.

`dynamic_rnn` records the cell's ops once, as the body of one `fj.scan` over time
(control_flow.Subgraph): the session runs it as one compiled loop whose trip count is
the fed sequence length (a new length does not recompile), differentiable, so TF1
optimizers train the cell's variables through it. With `sequence_length`, as in TF1,
each sequence's outputs past its length are zeros and its state is carried through
unchanged (the final state is the state at its last step). `static_rnn` unrolls the
cell over a Python list of inputs, as TF1 does.
"""
import types

from ... import dtypes as D
from ...frontend import api as F
from ...frontend import control_flow as CF
from ...frontend.api import _iota
from .control_flow import Subgraph, _as_tensor, _merge_shapes, _outer_op, flatten, is_sequence, \
    pack_sequence_as
from .graph import TensorShape, get_default_graph
from . import ops as O
from . import rnn_cell
from .rnn_cell import RNNCell
from .scopes import variable_scope


# --- reversing ------------------------------------------------------------------------------------
def _reverse_fj(x, axes):
    r = len(x.shape)
    axes = {a % r for a in axes}
    return F.getitem(x, tuple(slice(None, None, -1) if k in axes else slice(None) for k in range(r)))


def reverse(tensor, axis, name=None):
    """`tf.reverse` (ReverseV2): the elements in reverse order along each of `axis`."""
    ax = O.static_value(axis, "reverse axis")
    ax = [ax] if isinstance(ax, int) else list(ax)
    return O.apply("ReverseV2", lambda x: _reverse_fj(x, ax), (tensor,), name=name)


def _reverse_sequence_fj(x, lengths, seq_axis, batch_axis):
    r = len(x.shape)
    sa, ba = seq_axis % r, batch_axis % r
    perm = [ba, sa] + [k for k in range(r) if k not in (ba, sa)]
    xt = F.transpose(x, perm)
    t = _iota((xt.shape[0], xt.shape[1]), 1, D.int32)
    n = F.expand_dims(F.cast(lengths, D.int32), 1)
    idx = F.where(F.less(t, n), n - 1 - t, t)
    out = F.gather(xt, idx, axis=1, batch_dims=1)
    inv = [perm.index(k) for k in range(r)]
    return F.transpose(out, inv)


def reverse_sequence(input, seq_lengths, seq_axis=None, batch_axis=None, name=None, seq_dim=None,
                     batch_dim=None):
    """`tf.reverse_sequence`: for each batch entry b, its first seq_lengths[b] elements
    along seq_axis in reverse order, the rest unchanged."""
    seq_axis = seq_axis if seq_axis is not None else seq_dim
    batch_axis = batch_axis if batch_axis is not None else batch_dim
    if seq_axis is None:
        raise ValueError("reverse_sequence: seq_axis is required")
    batch_axis = 0 if batch_axis is None else batch_axis
    sa = O.static_value(seq_axis, "reverse_sequence seq_axis")
    ba = O.static_value(batch_axis, "reverse_sequence batch_axis")
    if sa == ba:
        raise ValueError("reverse_sequence: seq_axis and batch_axis must differ")
    return O.apply("ReverseSequence", lambda x, n: _reverse_sequence_fj(x, n, sa, ba),
                   (input, seq_lengths), name=name)


# --- helpers --------------------------------------------------------------------------------------
def _check_cell(cell, what="cell"):
    if not callable(cell) or not hasattr(cell, "state_size") or not hasattr(cell, "output_size"):
        raise TypeError(f"{what} must be an instance of RNNCell, saw: {type(cell).__name__}")


def _transpose_batch_time(x):
    if x.shape.ndims is not None and x.shape.ndims < 2:
        raise ValueError(f"Expected input tensor {x} to have rank at least 2")
    if x.shape.ndims is None:
        return O.apply("Transpose", lambda v: F.transpose(v, [1, 0] + list(range(2, len(v.shape)))),
                       (x,), default_name="transpose")
    return O.transpose(x, [1, 0] + list(range(2, x.shape.ndims)))


def _batch_size(x, axis):
    """The batch size as cell.zero_state takes it: an int, or tf.shape(x)[axis]."""
    if x.shape.ndims is not None and x.shape[axis].value is not None:
        return x.shape[axis].value
    return O.shape(x)[axis]


def _col(keep, like):
    """keep [batch] as [batch, 1, ...] to select rows of `like`."""
    return F.reshape(keep, [keep.shape[0]] + [1] * (len(like.shape) - 1))


def _initial_state(cell, initial_state, dtype, batch_size):
    if initial_state is not None:
        return initial_state
    if not dtype:
        raise ValueError("If there is no initial_state, you must give a dtype.")
    return cell.zero_state(batch_size, dtype)


def _seq_len(sequence_length):
    if sequence_length is None:
        return None
    sequence_length = O.convert_to_tensor(sequence_length)
    if sequence_length.shape.ndims not in (None, 1):
        raise ValueError(f"sequence_length must be a vector of length batch_size, but saw shape: "
                         f"{sequence_length.shape}")
    if not sequence_length.dtype.is_integer:
        raise TypeError(f"sequence_length must be integers, got {sequence_length.dtype.name}")
    return O.identity(O.to_int32(sequence_length) if sequence_length.dtype is not D.int32
                      else sequence_length, name="sequence_length")


# --- dynamic_rnn ----------------------------------------------------------------------------------
def dynamic_rnn(cell, inputs, sequence_length=None, initial_state=None, dtype=None,
                parallel_iterations=None, swap_memory=False, time_major=False, scope=None):
    """Run `cell` over the time dim of `inputs` ([batch, time, ...], or [time, batch, ...]
    when time_major); returns (outputs, final_state), outputs in the inputs' layout.
    Variables go in scope `scope` (default "rnn"): `rnn/basic_lstm_cell/kernel`."""
    _check_cell(cell)
    with variable_scope(scope or "rnn") as varscope:
        flat_input = [O.convert_to_tensor(x) for x in flatten(inputs)]
        if not flat_input:
            raise ValueError("dynamic_rnn: inputs must not be empty")
        for x in flat_input:
            if x.shape.ndims is not None and x.shape.ndims < 3:
                raise ValueError(f"dynamic_rnn: inputs must have rank at least 3 ([batch, time, depth]"
                                 f"), {x.name} has shape {x.shape}")
        if not time_major:
            flat_input = [_transpose_batch_time(x) for x in flat_input]
        seq = _seq_len(sequence_length)
        state = _initial_state(cell, initial_state, dtype, _batch_size(flat_input[0], 1))
        outputs, final_state = _dynamic_rnn_loop(cell, flat_input, inputs, state, seq, varscope.name)
        if not time_major:
            outputs = pack_sequence_as(outputs, [_transpose_batch_time(o) for o in flatten(outputs)])
        return outputs, final_state


def _dynamic_rnn_loop(cell, flat_input, input_struct, state, seq, scope_name):
    g = get_default_graph()
    state_flat = [O.convert_to_tensor(s) for s in flatten(state)]
    what = f"the cell of tf.nn.dynamic_rnn '{scope_name}'"
    sub = Subgraph("scan", what)
    with g.name_scope("while") as loop_scope:
        with sub.recording():
            x_args = [sub.arg(x.dtype, x.shape[1:],
                              g._abstract.run(lambda a: a[0], [x._abstract]) if x._abstract is not None
                              else None) for x in flat_input]
            s_args = [sub.arg(s.dtype, s.shape, s._abstract) for s in state_flat]
            out, new_state = cell(pack_sequence_as(input_struct, x_args), pack_sequence_as(state, s_args))
            out_flat = [_as_tensor(o, what) for o in flatten(out)]
            new_flat = [_as_tensor(s, what) for s in flatten(new_state)]
    if len(new_flat) != len(state_flat):
        raise ValueError(f"{what}: the cell returned a state of {len(new_flat)} tensors for a state of "
                         f"{len(state_flat)}")
    state_specs = []
    for k, (s, n) in enumerate(zip(state_flat, new_flat)):
        if s.dtype is not n.dtype:
            raise TypeError(f"{what}: state {k} enters as {s.dtype.name} and the cell returns "
                            f"{n.dtype.name}")
        shape = _merge_shapes(s.shape, n.shape)
        if shape is None:
            raise ValueError(f"{what}: state {k} has shape {s.shape} but the cell returns shape {n.shape}")
        state_specs.append((s.dtype, shape))
    sub.close(out_flat + new_flat)
    nx, ns, no = len(flat_input), len(state_flat), len(out_flat)
    steps = flat_input[0].shape[0].value if flat_input[0].shape.ndims is not None else None
    out_specs = [(o.dtype, TensorShape(None) if o.shape.ndims is None else TensorShape([steps] + o.shape.as_list()))
                 for o in out_flat]
    has_seq = seq is not None

    def compute(ev, vals, outer):
        xs, init = list(vals[:nx]), list(vals[nx:nx + ns])
        lengths = vals[nx + ns] if has_seq else None
        n_steps = xs[0].shape[0]

        def step(carry, x):
            t, st = carry[0], list(carry[1:])
            res = sub.run(ev, list(x) + st, outer, loop=(n_steps, t))
            outs, new = res[:no], res[no:]
            if lengths is not None:
                keep = F.less(t, lengths)
                outs = [F.where(_col(keep, o), o, F.zeros_like(o)) for o in outs]
                new = [F.where(_col(keep, v), v, s) for v, s in zip(new, st)]
            return [t + 1] + new, outs
        carry, ys = CF.scan(step, [F.constant(0, D.int32)] + init, xs)
        return list(ys) + list(carry[1:])

    with g.name_scope(loop_scope):
        op = _outer_op("DynamicRnn", compute, flat_input + state_flat + ([seq] if has_seq else []), [sub],
                       "Exit", out_specs + state_specs, {})
    outs = list(op.outputs)
    outputs = pack_sequence_as(out, outs[:no])
    final_state = pack_sequence_as(state, outs[no:])
    return outputs, final_state


# --- static_rnn -------------------------------------------------------------------------------------
def _copy_through(time, seq, new, old):
    """new where time < seq (per batch row), else old (zeros when old is None)."""
    if old is None:
        return O.apply("Select", lambda s, n: F.where(_col(F.less(time, s), n), n, F.zeros_like(n)),
                       (seq, new), default_name="Select")
    return O.apply("Select", lambda s, n, o: F.where(_col(F.less(time, s), n), n, o), (seq, new, old),
                   default_name="Select")


def static_rnn(cell, inputs, initial_state=None, dtype=None, sequence_length=None, scope=None):
    """TF1's static (unrolled) RNN: `inputs` is a Python list of [batch, depth] tensors, one
    per step; returns (list of outputs, final state). The cell's ops are built once per
    step; variables as dynamic_rnn's (scope "rnn")."""
    _check_cell(cell)
    if not is_sequence(inputs):
        raise TypeError("inputs must be a sequence")
    if not inputs:
        raise ValueError("inputs must not be empty")
    outputs = []
    with variable_scope(scope or "rnn") as varscope:
        first = O.convert_to_tensor(flatten(inputs[0])[0])
        if first.shape.ndims is not None and first.shape.ndims < 2:
            raise ValueError(f"Expected inputs to have rank at least 2, got {first.shape}")
        state = _initial_state(cell, initial_state, dtype, _batch_size(first, 0))
        seq = _seq_len(sequence_length)
        for time, input_ in enumerate(inputs):
            if time > 0:
                varscope.reuse_variables()
            output, new_state = cell(input_, state)
            if seq is not None:
                output = pack_sequence_as(output, [_copy_through(time, seq, o, None) for o in flatten(output)])
                new_state = pack_sequence_as(new_state, [_copy_through(time, seq, n, s) for n, s in
                                                         zip(flatten(new_state), flatten(state))])
            state = new_state
            outputs.append(output)
        return outputs, state


# --- bidirectional ----------------------------------------------------------------------------------
def bidirectional_dynamic_rnn(cell_fw, cell_bw, inputs, sequence_length=None, initial_state_fw=None,
                              initial_state_bw=None, dtype=None, parallel_iterations=None,
                              swap_memory=False, time_major=False, scope=None):
    """Two dynamic_rnns, scopes `bidirectional_rnn/fw` and `/bw`; the backward one reads each
    sequence reversed within its length (tf.reverse_sequence) and its outputs are reversed
    back. Returns ((output_fw, output_bw), (state_fw, state_bw))."""
    _check_cell(cell_fw, "cell_fw")
    _check_cell(cell_bw, "cell_bw")
    with variable_scope(scope or "bidirectional_rnn"):
        with variable_scope("fw") as fw_scope:
            output_fw, state_fw = dynamic_rnn(cell_fw, inputs, sequence_length, initial_state_fw, dtype,
                                              parallel_iterations, swap_memory, time_major, scope=fw_scope)
        time_axis, batch_axis = (0, 1) if time_major else (1, 0)

        def _reverse(x):
            if sequence_length is not None:
                return reverse_sequence(x, sequence_length, seq_axis=time_axis, batch_axis=batch_axis)
            return reverse(x, [time_axis])

        with variable_scope("bw") as bw_scope:
            inputs_reverse = pack_sequence_as(inputs, [_reverse(O.convert_to_tensor(x)) for x in flatten(inputs)])
            tmp, state_bw = dynamic_rnn(cell_bw, inputs_reverse, sequence_length, initial_state_bw, dtype,
                                        parallel_iterations, swap_memory, time_major, scope=bw_scope)
    output_bw = pack_sequence_as(tmp, [_reverse(o) for o in flatten(tmp)])
    return (output_fw, output_bw), (state_fw, state_bw)


def _reverse_seq(input_seq, lengths):
    if lengths is None:
        return list(reversed(input_seq))
    flat = [flatten(x) for x in input_seq]
    out_flat = []
    for k in range(len(flat[0])):
        stacked = O.stack([f[k] for f in flat])
        rev = reverse_sequence(stacked, lengths, seq_axis=0, batch_axis=1)
        out_flat.append(O.unstack(rev, num=len(input_seq)))
    return [pack_sequence_as(input_seq[t], [out_flat[k][t] for k in range(len(out_flat))])
            for t in range(len(input_seq))]


def static_bidirectional_rnn(cell_fw, cell_bw, inputs, initial_state_fw=None, initial_state_bw=None,
                             dtype=None, sequence_length=None, scope=None):
    """Two static_rnns (scopes `bidirectional_rnn/fw`, `/bw`); returns (outputs, state_fw,
    state_bw), each output the concatenation of the two directions' outputs."""
    _check_cell(cell_fw, "cell_fw")
    _check_cell(cell_bw, "cell_bw")
    if not is_sequence(inputs) or not inputs:
        raise TypeError("inputs must be a non-empty sequence")
    with variable_scope(scope or "bidirectional_rnn"):
        with variable_scope("fw") as fw_scope:
            output_fw, state_fw = static_rnn(cell_fw, inputs, initial_state_fw, dtype, sequence_length,
                                             scope=fw_scope)
        with variable_scope("bw") as bw_scope:
            reversed_inputs = _reverse_seq(inputs, sequence_length)
            tmp, state_bw = static_rnn(cell_bw, reversed_inputs, initial_state_bw, dtype, sequence_length,
                                       scope=bw_scope)
    output_bw = _reverse_seq(tmp, sequence_length)
    outputs = [pack_sequence_as(fw, [O.concat([a, b], 1) for a, b in zip(flatten(fw), flatten(bw))])
               for fw, bw in zip(output_fw, output_bw)]
    return outputs, state_fw, state_bw


# `tf.contrib.rnn`
contrib_rnn = types.SimpleNamespace(
    RNNCell=RNNCell, LayerRNNCell=rnn_cell.LayerRNNCell, BasicRNNCell=rnn_cell.BasicRNNCell,
    BasicLSTMCell=rnn_cell.BasicLSTMCell, LSTMCell=rnn_cell.LSTMCell, GRUCell=rnn_cell.GRUCell,
    MultiRNNCell=rnn_cell.MultiRNNCell, DropoutWrapper=rnn_cell.DropoutWrapper,
    LSTMStateTuple=rnn_cell.LSTMStateTuple, static_rnn=static_rnn,
    static_bidirectional_rnn=static_bidirectional_rnn)
