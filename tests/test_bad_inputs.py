"""Inputs TensorFlow rejects must raise a clear flowjit error, eagerly and under @fj.jit
alike: the message names the op, the offending argument with its value, the shapes and
the user's line (this file)."""
import numpy as np
import pytest

import flowjit as fj
from flowjit.errors import DTypeError, InvalidArgumentError, ShapeError

X = np.arange(6, dtype=np.float32).reshape(2, 3)
ROW = np.ones((1, 3), np.float32)
IDX = np.array([0, 2], np.int32)
INTS = np.array([2, 3], np.int32)
IMG = np.ones((1, 4, 4, 3), np.float32)
EMPTY = np.ones((2, 0), np.float32)

# (case, function, its array arguments, exception type, substrings of the message).
# Each function runs eagerly and under @fj.jit with the arrays as jit inputs.
CASES = [
    # 1. an axis must be an integer: no float, str or bool (int() would take them)
    ("reduce_sum axis float", lambda x: fj.reduce_sum(x, axis=1.0), [X], DTypeError,
     ["reduce_sum", "axis", "1.0"]),
    ("reduce_sum axis str", lambda x: fj.reduce_sum(x, axis="1"), [X], DTypeError,
     ["reduce_sum", "axis", "'1'"]),
    ("reduce_sum axis bool", lambda x: fj.reduce_sum(x, axis=True), [X], DTypeError,
     ["reduce_sum", "axis", "True"]),
    ("reduce_max axis list", lambda x: fj.reduce_max(x, axis=[0, 1.0]), [X], DTypeError,
     ["reduce_max", "axis", "1.0"]),
    ("reduce_mean axis float", lambda x: fj.reduce_mean(x, axis=0.0), [X], DTypeError,
     ["reduce_mean", "axis", "0.0"]),
    ("reduce_sum axis float tensor", lambda x: fj.reduce_sum(x, axis=fj.constant(1.0)), [X],
     DTypeError, ["reduce_sum", "axis", "1.0"]),
    ("argmax axis float", lambda x: fj.argmax(x, axis=1.0), [X], DTypeError,
     ["argmax", "axis", "1.0"]),
    ("argmin axis str", lambda x: fj.argmin(x, axis="0"), [X], DTypeError,
     ["argmin", "axis", "'0'"]),
    ("concat axis float", lambda x: fj.concat([x, x], axis=1.0), [X], DTypeError,
     ["concat", "axis", "1.0"]),
    ("stack axis float", lambda x: fj.stack([x, x], axis=0.5), [X], DTypeError,
     ["stack", "axis", "0.5"]),
    ("expand_dims axis float", lambda x: fj.expand_dims(x, 1.0), [X], DTypeError,
     ["expand_dims", "axis", "1.0"]),
    ("squeeze axis float", lambda x: fj.squeeze(x, 0.0), [ROW], DTypeError,
     ["squeeze", "axis", "0.0"]),
    ("split axis float", lambda x: fj.split(x, 3, axis=1.0), [X], DTypeError,
     ["split", "axis", "1.0"]),
    ("unstack axis float", lambda x: fj.unstack(x, axis=1.0), [X], DTypeError,
     ["unstack", "axis", "1.0"]),
    ("gather axis float", lambda x, i: fj.gather(x, i, axis=1.0), [X, IDX], DTypeError,
     ["gather", "axis", "1.0"]),
    ("gather batch_dims float", lambda x, i: fj.gather(x, i, batch_dims=1.0), [X, IDX],
     DTypeError, ["gather", "batch_dims", "1.0"]),
    ("one_hot axis float", lambda i: fj.one_hot(i, 3, axis=0.0), [IDX], DTypeError,
     ["one_hot", "axis", "0.0"]),
    ("transpose perm float", lambda x: fj.transpose(x, [1.0, 0]), [X], DTypeError,
     ["transpose", "perm", "1.0"]),
    ("slice bound float", lambda x: fj.identity(x)[0:1.0], [X], DTypeError, ["getitem", "slice", "1.0"]),
    # 2. shape arguments: integer entries >= 0 (reshape also takes one -1)
    ("reshape float dim", lambda x: fj.reshape(x, [3, 2.0]), [X], DTypeError,
     ["reshape", "shape", "2.0"]),
    ("tile float multiple", lambda x: fj.tile(x, [1, 2.0]), [X], DTypeError,
     ["tile", "multiples", "2.0"]),
    ("tile negative multiple", lambda x: fj.tile(x, [-1, 1]), [X], ShapeError,
     ["tile", "multiples", "-1"]),
    ("zeros float dim", lambda x: x + fj.zeros([2.0, 3]), [X], DTypeError,
     ["zeros", "shape", "2.0"]),
    ("zeros negative dim", lambda x: fj.zeros([-2]), [X], ShapeError, ["zeros", "shape", "-2"]),
    ("ones str dim", lambda x: x + fj.ones(["3"]), [X], DTypeError, ["ones", "shape", "'3'"]),
    ("fill float dim", lambda x: x + fj.fill([2.5], 1.0), [X], DTypeError,
     ["fill", "shape", "2.5"]),
    ("broadcast_to float dim", lambda x: fj.broadcast_to(x, [2, 3.0]), [X], DTypeError,
     ["broadcast_to", "shape", "3.0"]),
    ("eye float size", lambda x: fj.eye(2.0), [X], DTypeError, ["eye", "2.0"]),
    ("constant float shape", lambda x: fj.constant(1.0, shape=[2.0]), [X], DTypeError,
     ["constant", "shape", "2.0"]),
    ("one_hot float depth", lambda i: fj.one_hot(i, 3.0), [IDX], DTypeError,
     ["one_hot", "depth", "3.0"]),
    ("one_hot negative depth", lambda i: fj.one_hot(i, -3), [IDX], ShapeError,
     ["one_hot", "depth", "-3"]),
    ("one_hot axis out of range", lambda i: fj.one_hot(i, 3, axis=2), [IDX], ShapeError,
     ["one_hot", "axis 2", "(2,)"]),
    ("pad float padding", lambda x: fj.pad(x, [[0, 1.0], [0, 0]]), [X], DTypeError,
     ["pad", "paddings", "1.0"]),
    # 3. squeeze: an axis out of range says so (not "dimension 1 is not 1")
    ("squeeze axis out of range", lambda x: fj.squeeze(x, 5), [ROW], ShapeError,
     ["squeeze", "axis 5", "rank 2", "(1, 3)"]),
    ("reduce_mean axis out of range", lambda x: fj.reduce_mean(x, axis=2), [X], ShapeError,
     ["reduce_mean", "axis 2", "rank 2", "(2, 3)"]),
    ("argmax axis out of range", lambda x: fj.argmax(x, axis=-3), [X], ShapeError,
     ["argmax", "axis -3", "rank 2", "(2, 3)"]),
    ("squeeze negative axis", lambda x: fj.squeeze(x, -3), [ROW], ShapeError,
     ["squeeze", "axis -3", "rank 2"]),
    # 4. split: axis in range, a count >= 1, sizes >= 0 with at most one -1
    ("split axis out of range", lambda x: fj.split(x, 1, axis=5), [X], ShapeError,
     ["split", "axis 5", "rank 2", "(2, 3)"]),
    ("split zero parts", lambda x: fj.split(x, 0), [X], InvalidArgumentError,
     ["split", "num_or_size_splits must be >= 1", "got 0", "(2, 3)"]),
    ("split negative size", lambda x: fj.split(x, [-2, 5], axis=1), [X], InvalidArgumentError,
     ["split", "[-2, 5]", "(2, 3)"]),
    ("split two -1", lambda x: fj.split(x, [-1, -1], axis=1), [X], InvalidArgumentError,
     ["split", "[-1, -1]", "at most one -1"]),
    ("split -1 too small", lambda x: fj.split(x, [-1, 5], axis=1), [X], ShapeError,
     ["split", "[-1, 5]", "size 3"]),
    ("split float size", lambda x: fj.split(x, [1.0, 2], axis=1), [X], DTypeError,
     ["split", "size", "1.0"]),
    ("split sizes not adding up", lambda x: fj.split(x, [1, 1], axis=1), [X], ShapeError,
     ["split", "[1, 1]", "3"]),
    # 5. conv2d with an empty filter, pooling windows and strides <= 0
    ("conv2d empty filter height", lambda x, w: fj.nn.conv2d(x, w, 1, "VALID"),
     [IMG, np.ones((0, 3, 3, 1), np.float32)], InvalidArgumentError,
     ["conv2d", "zero elements", "(0, 3, 3, 1)"]),
    ("conv2d no output channels", lambda x, w: fj.nn.conv2d(x, w, 1, "VALID"),
     [IMG, np.ones((3, 3, 3, 0), np.float32)], InvalidArgumentError,
     ["conv2d", "zero elements", "(3, 3, 3, 0)"]),
    ("max_pool ksize 0", lambda x: fj.nn.max_pool2d(x, 0, 1, "VALID"), [IMG],
     InvalidArgumentError, ["max_pool2d", "ksize", ">= 1", "got 0"]),
    ("max_pool strides 0", lambda x: fj.nn.max_pool2d(x, 2, [1, 0, 1, 1], "VALID"), [IMG],
     InvalidArgumentError, ["max_pool2d", "strides", "[1, 0, 1, 1]"]),
    ("avg_pool negative ksize", lambda x: fj.nn.avg_pool2d(x, [2, -1], 1, "VALID"), [IMG],
     InvalidArgumentError, ["avg_pool2d", "ksize", "[2, -1]"]),
    ("avg_pool float strides", lambda x: fj.nn.avg_pool2d(x, 2, 1.0, "VALID"), [IMG],
     InvalidArgumentError, ["avg_pool2d", "strides", "1.0"]),
    ("conv2d float explicit padding",
     lambda x, w: fj.nn.conv2d(x, w, 1, [[0, 0], [1.0, 1], [1, 1], [0, 0]]),
     [IMG, np.ones((3, 3, 3, 1), np.float32)], InvalidArgumentError,
     ["conv2d", "padding", "1.0"]),
    # 6. argmax / argmin over an empty axis
    ("argmax empty axis", lambda x: fj.argmax(x, axis=1), [EMPTY], ShapeError,
     ["argmax", "axis 1 of size 0", "(2, 0)"]),
    ("argmin empty axis", lambda x: fj.argmin(x, axis=-1), [EMPTY], ShapeError,
     ["argmin", "axis 1 of size 0", "(2, 0)"]),
    # 7. an integer base with a negative exponent known at trace time
    ("int pow negative literal", lambda x: fj.pow(x, -1), [INTS], InvalidArgumentError,
     ["pow", "negative integer powers", "exponent -1", "int32"]),
    ("int ** negative literal", lambda x: fj.identity(x) ** -2, [INTS], InvalidArgumentError,
     ["pow", "negative integer powers", "exponent -2"]),
    ("int pow negative constant", lambda x: fj.pow(x, fj.constant([1, -3])), [INTS],
     InvalidArgumentError, ["pow", "negative integer powers", "exponent -3"]),
    # 8. results too large to exist are refused before anything is allocated
    ("tile huge", lambda x: fj.tile(x, [2**62]), [np.ones(4)], InvalidArgumentError,
     ["tile", "multiples [4611686018427387904]", "(4,)", "too many"]),
    ("zeros huge", lambda x: x + fj.zeros([2**40, 2**40]), [X], InvalidArgumentError,
     ["zeros", "1099511627776", "too many"]),
    ("broadcast_to huge", lambda x: fj.broadcast_to(x, [2**62, 2, 3]), [X],
     InvalidArgumentError, ["broadcast_to", "4611686018427387904", "too many"]),
    ("one_hot huge depth", lambda i: fj.one_hot(i, 2**62), [IDX], InvalidArgumentError,
     ["one_hot", "depth 4611686018427387904", "too many"]),
    ("eye huge", lambda x: fj.eye(2**32), [X], InvalidArgumentError,
     ["eye", "num_rows 4294967296", "too many"]),
    ("pad huge", lambda x: fj.pad(x, [[0, 2**62], [0, 0]]), [X], InvalidArgumentError,
     ["pad", "4611686018427387904", "too many"]),
]


def _run(tier, fn, args):
    return fn(*args) if tier == "eager" else fj.jit(fn)(*args)


@pytest.mark.parametrize("tier", ["eager", "jit"])
@pytest.mark.parametrize("case, fn, args, exc, parts", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises(case, fn, args, exc, parts, tier):
    with pytest.raises(exc) as e:
        _run(tier, fn, args)
    msg = str(e.value)
    for p in parts:
        assert p in msg, (p, msg)
    assert "test_bad_inputs.py" in msg, msg      # the user's line


# Strictness must not refuse what TF takes: NumPy integers, integer 0-d and 1-D tensors,
# symbolic sizes from x.shape, -1 in reshape and split.
class Index:
    """An integer-like object (like TF1's Dimension): operator.index takes it."""

    def __index__(self):
        return 1


GOOD = [
    ("__index__ axis", lambda x: fj.reduce_sum(x, axis=Index()), [X], X.sum(1)),
    ("__index__ dim", lambda x: fj.reshape(x, [-1, Index()]), [X], X.reshape(6, 1)),
    ("scalar shape", lambda x: fj.zeros(np.int64(3)) + x, [X], X),
    ("numpy int axis", lambda x: fj.reduce_sum(x, axis=np.int64(1)), [X], X.sum(1)),
    ("tensor axis", lambda x: fj.reduce_sum(x, axis=fj.constant(1)), [X], X.sum(1)),
    ("tensor axes", lambda x: fj.reduce_max(x, axis=fj.constant([0, 1])), [X], X.max()),
    ("argmax numpy axis", lambda x: fj.argmax(x, axis=np.int32(0)), [X], X.argmax(0)),
    ("reshape -1 and sym", lambda x: fj.reshape(x, [x.shape[0], -1, np.int64(1)]), [X],
     X.reshape(2, 3, 1)),
    ("zeros sym", lambda x: fj.zeros([x.shape[0], 2]) + 1.0, [X], np.ones((2, 2), np.float32)),
    ("tile numpy multiples", lambda x: fj.tile(x, np.array([2, 1])), [X], np.tile(X, (2, 1))),
    ("split -1", lambda x: fj.split(x, [-1, 1], axis=1)[0], [X], X[:, :2]),
    ("split numpy count", lambda x: fj.split(x, np.int64(3), axis=-1)[2], [X], X[:, 2:]),
    ("squeeze negative", lambda x: fj.squeeze(x, -2), [ROW], ROW[0]),
    ("one_hot sym depth", lambda i, x: fj.one_hot(i, x.shape[1]), [IDX, X],
     np.eye(3, dtype=np.float32)[IDX]),
    ("pool numpy ksize", lambda x: fj.nn.max_pool2d(x, np.int64(2), 2, "VALID"), [IMG],
     np.ones((1, 2, 2, 3), np.float32)),
    ("int pow positive", lambda x: fj.pow(x, 2), [INTS], INTS ** 2),
    ("float pow negative", lambda x: fj.pow(x, -1.0), [X + 1], 1 / (X + 1)),
    # TF: max/min over nothing is the identity (-inf / +inf, the integer limits)
    ("reduce_max empty", lambda x: fj.reduce_max(x, axis=1), [EMPTY],
     np.full(2, -np.inf, np.float32)),
    ("reduce_min empty", lambda x: fj.reduce_min(x, axis=1), [EMPTY],
     np.full(2, np.inf, np.float32)),
    ("reduce_max empty int", lambda x: fj.reduce_max(x), [np.ones((0, 3), np.int32)],
     np.int32(np.iinfo(np.int32).min)),
    ("reduce_min empty int", lambda x: fj.reduce_min(x, axis=0), [np.ones((0, 3), np.int64)],
     np.full(3, np.iinfo(np.int64).max)),
]


@pytest.mark.parametrize("tier", ["eager", "jit"])
@pytest.mark.parametrize("case, fn, args, expected", GOOD, ids=[c[0] for c in GOOD])
def test_valid_input_still_accepted(case, fn, args, expected, tier):
    out = np.asarray(_run(tier, fn, args))
    assert out.shape == np.shape(expected)
    np.testing.assert_array_equal(out, expected)


def test_argmax_empty_axis_after_nonempty_trace():
    # the size-0 call must not reuse code traced for size 3 (it would read x[o, 0, j])
    f = fj.jit(lambda x: fj.argmax(x, axis=1))
    assert np.asarray(f(X)).tolist() == [2, 2]
    with pytest.raises(ShapeError, match=r"argmax.*axis 1 of size 0"):
        f(EMPTY)


def test_conv2d_empty_filter_after_nonempty_trace():
    f = fj.jit(lambda x, w: fj.nn.conv2d(x, w, 1, "VALID"))
    assert np.asarray(f(IMG, np.ones((3, 3, 3, 2), np.float32))).shape == (1, 2, 2, 2)
    with pytest.raises(InvalidArgumentError, match=r"conv2d.*zero elements"):
        f(IMG, np.ones((3, 3, 3, 0), np.float32))


def test_int_pow_negative_runtime_exponent_eager():
    with pytest.raises(InvalidArgumentError) as e:
        fj.pow(fj.constant(INTS), fj.constant(np.array([1, -1], np.int32)))
    msg = str(e.value)
    assert "pow" in msg and "negative integer powers" in msg and "test_bad_inputs.py" in msg


def test_int_pow_negative_runtime_exponent_jit():
    f = fj.jit(lambda x, y: fj.pow(x, y))
    assert f(INTS, np.array([1, 2], np.int32)).numpy().tolist() == \
        np.power(INTS, np.array([1, 2], np.int32)).tolist()
    with pytest.raises(InvalidArgumentError, match=r"negative integer powers.*exponent -1"):
        f(INTS, np.array([1, -1], np.int32))
    v = fj.Variable(np.ones(2, np.int32))
    step = fj.jit(lambda y: v.assign_add(fj.pow(v.read_value() + 1, y)) and None)
    with pytest.raises(InvalidArgumentError):
        step(np.array([1, -1], np.int32))
    assert v.numpy().tolist() == [1, 1]               # the failed step changed nothing
    step(np.array([1, 2], np.int32))
    assert v.numpy().tolist() == [3, 5]


def test_tile_cannot_allocate_names_op():
    # below the 2**62-byte rule, but past any address space: NumPy's MemoryError is
    # replaced by one that names tile and the size
    with pytest.raises(MemoryError) as e:
        fj.tile(np.ones(4), [2**45])
    msg = str(e.value)
    assert "tile" in msg and "cannot allocate" in msg and "GiB" in msg
    assert "test_bad_inputs.py" in msg
