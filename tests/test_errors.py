"""Bad input: clear exceptions naming the op, the shapes/dtypes and the user's line."""
import numpy as np
import pytest

import flowjit as fj


def test_shape_error_names_op_shapes_and_line():
    a = np.ones((2, 3), np.float32)
    b = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError) as e:
        fj.add(a, b)  # the line the message must point at
    msg = str(e.value)
    assert "add" in msg and "(2, 3)" in msg and "(4, 3)" in msg
    assert "test_errors.py" in msg and "the line the message must point at" in msg


def test_shape_error_at_trace_time_points_at_user_line():
    @fj.jit
    def f(x, w):
        return fj.matmul(x, w)  # bad matmul here
    with pytest.raises(ValueError) as e:
        f(np.ones((2, 3), np.float32), np.ones((4, 5), np.float32))
    msg = str(e.value)
    assert "matmul" in msg and "bad matmul here" in msg and "inner dimensions" in msg
    assert "Traceback" not in msg and "numba" not in msg.lower()


def test_dtype_error_says_to_cast():
    with pytest.raises(TypeError) as e:
        fj.multiply(fj.constant([1.0]), fj.constant([1], fj.int32))
    assert "fj.cast" in str(e.value) and "float32" in str(e.value) and "int32" in str(e.value)


def test_gather_out_of_range_raises_eager_and_jit():
    p = np.arange(12, dtype=np.float32).reshape(4, 3)
    with pytest.raises(IndexError, match="out of range"):
        fj.gather(p, np.array([0, 4]))
    f = fj.jit(lambda p, i: fj.gather(p, i) * 2.0)
    assert np.allclose(f(p, np.array([3, 0], np.int32)).numpy(), p[[3, 0]] * 2)
    for bad in ([0, 4], [-1, 0], [2, 1000000]):
        with pytest.raises(IndexError) as e:
            f(p, np.array(bad, np.int32))
        assert "gather" in str(e.value) and "test_errors.py" in str(e.value)


def test_integer_index_out_of_range():
    x = np.ones((3, 2), np.float32)
    with pytest.raises(IndexError, match="out of range"):
        fj.constant(x)[3]
    f = fj.jit(lambda a: a[2])
    assert f(x).shape == (2,)
    with pytest.raises(IndexError, match="out of range"):
        f(np.ones((2, 2), np.float32))       # size shrank below the index: retrace, error


def test_bad_axis_and_reshape_messages():
    x = fj.constant(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        fj.reduce_sum(x, axis=2)
    with pytest.raises(ValueError, match="cannot reshape"):
        fj.reshape(x, [4, 2])
    with pytest.raises(ValueError, match="not broadcastable"):
        fj.jit(lambda a, b: a * b)(np.ones(3, np.float32), np.ones(4, np.float32))


def test_unsupported_argument_type():
    with pytest.raises(TypeError):
        fj.jit(lambda a: a)({1, 2})
