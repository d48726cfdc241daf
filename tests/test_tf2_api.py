"""TF2's core names on `import flowjit as tf`: tf.function with input_signature,
tf.math / tf.linalg, tf.Module, tf.initializers, string constants, and the fixes TF2
programs needed (Tensor.__format__, GradientTape.watched_variables, checkpoints of
modules and Keras models)."""
import numpy as np
import pytest

import flowjit as tf
from conftest import finite_differences


def test_hello_world():
    hello = tf.constant("Hello, TensorFlow!")
    assert hello.numpy() == b"Hello, TensorFlow!"
    assert str(hello) == "fj.Tensor(b'Hello, TensorFlow!', shape=(), dtype=string)"
    assert hello.dtype is tf.dtypes.string and hello.shape == ()
    words = tf.constant(["a", "bc"])
    assert list(words.numpy()) == [b"a", b"bc"]
    with pytest.raises(tf.errors.DTypeError, match="reduce_sum"):
        tf.reduce_sum(words)


def test_tensor_format_like_numpy():
    assert "{:.4f}".format(tf.constant(1.23456)) == "1.2346"
    assert f"{tf.constant(7):>3d}" == "  7"
    assert "{}".format(tf.constant([1, 2])) == str(tf.constant([1, 2]))


def test_function_with_input_signature():
    calls = []

    @tf.function(input_signature=[tf.TensorSpec(shape=[None, 3], dtype=tf.float32)])
    def row_sums(x):
        calls.append(1)
        return tf.reduce_sum(x, axis=1)
    np.testing.assert_allclose(row_sums(np.ones((4, 3), np.float32)).numpy(), [3, 3, 3, 3])
    np.testing.assert_allclose(row_sums(np.ones((2, 3), np.float32)).numpy(), [3, 3])
    assert len(calls) == 1                     # a new batch size does not trace again
    with pytest.raises(ValueError, match=r"shape \(4, 2\).*TensorSpec\(shape=\(None, 3\)"):
        row_sums(np.ones((4, 2), np.float32))
    with pytest.raises(ValueError, match="int64"):
        row_sums(np.ones((4, 3), np.int64))
    with pytest.raises(TypeError, match="1 arguments"):
        row_sums(np.ones((4, 3), np.float32), np.ones(3))
    plain = tf.function(lambda a, b: a * b)
    assert float(plain(np.float32(2), np.float32(3))) == 6.0


def test_function_as_a_method_with_signature():
    class Scale(tf.Module):
        def __init__(self):
            super().__init__()
            self.k = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def __call__(self, x):
            return x * self.k
    np.testing.assert_allclose(Scale()(np.array([1, 2], np.float32)).numpy(), [2, 4])


def test_math_and_linalg_namespaces_against_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4)).astype(np.float32)
    y = rng.normal(size=(4, 2)).astype(np.float32)
    np.testing.assert_allclose(tf.math.log(np.abs(x)).numpy(), np.log(np.abs(x)), rtol=1e-6)
    np.testing.assert_allclose(tf.math.reduce_logsumexp(x, axis=1).numpy(),
                               np.log(np.exp(x).sum(1)), rtol=1e-5)
    np.testing.assert_allclose(tf.math.reduce_std(x, axis=0).numpy(), x.std(0), rtol=1e-5)
    np.testing.assert_allclose(tf.math.reduce_variance(x).numpy(), x.var(), rtol=1e-5)
    np.testing.assert_allclose(tf.math.l2_normalize(x, axis=1).numpy(),
                               x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(tf.math.divide_no_nan(x, np.array([0, 1, 2, 0], np.float32)).numpy(),
                               np.where([0, 1, 2, 0] == np.zeros(4), 0, x / np.array([1, 1, 2, 1])), rtol=1e-6)
    assert tf.math.is_nan(np.array([np.nan, 1.0])).numpy().tolist() == [True, False]
    assert tf.math.is_finite(np.array([np.inf, 1.0, np.nan])).numpy().tolist() == [False, True, False]
    np.testing.assert_allclose(tf.math.xlogy(np.array([0.0, 2.0]), np.array([0.0, 3.0])).numpy(),
                               [0.0, 2 * np.log(3.0)], rtol=1e-6)
    np.testing.assert_allclose(tf.math.log_sigmoid(x).numpy(), -np.log1p(np.exp(-x)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tf.linalg.matmul(x, y).numpy(), x @ y, rtol=1e-5)
    np.testing.assert_allclose(tf.linalg.matrix_transpose(x).numpy(), x.T)
    np.testing.assert_allclose(tf.linalg.matvec(x, y[:, 0]).numpy(), x @ y[:, 0], rtol=1e-5)
    np.testing.assert_allclose(tf.linalg.norm(x).numpy(), np.linalg.norm(x), rtol=1e-6)
    sq = rng.normal(size=(2, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(tf.linalg.trace(sq).numpy(), np.trace(sq, axis1=1, axis2=2), rtol=1e-5)
    assert tf.math.add is tf.add and tf.linalg.matmul is tf.matmul


@pytest.mark.parametrize("fn", ["reduce_logsumexp", "l2_normalize", "reduce_std", "divide_no_nan", "xlogy"])
def test_composed_math_gradients_match_finite_differences(fn):
    rng = np.random.default_rng(1)
    x = rng.uniform(0.5, 2.0, size=(3, 4))
    f = {"reduce_logsumexp": lambda t: tf.math.reduce_logsumexp(t, axis=1),
         "l2_normalize": lambda t: tf.math.l2_normalize(t, axis=0) * np.arange(12.0).reshape(3, 4),
         "reduce_std": lambda t: tf.math.reduce_std(t, axis=1),
         "divide_no_nan": lambda t: tf.math.divide_no_nan(t * t, t + 1.0),
         "xlogy": lambda t: tf.math.xlogy(t, t + 0.5)}[fn]

    def scalar(t):
        return tf.reduce_sum(f(t))
    v = tf.Variable(x)
    with tf.GradientTape() as tape:
        out = scalar(v)
    g = tape.gradient(out, v).numpy()
    np.testing.assert_allclose(g, finite_differences(lambda a: float(scalar(a)), [x], 0), rtol=1e-5, atol=1e-7)

    @tf.function
    def jitted(a):
        with tf.GradientTape() as t2:
            t2.watch(a)
            o = scalar(a)
        return t2.gradient(o, a)
    np.testing.assert_allclose(jitted(x).numpy(), g, rtol=1e-6)


def test_module_collects_variables_from_attributes_lists_dicts_and_layers():
    import flowjit.keras as keras

    class Dense(tf.Module):
        def __init__(self, n_in, n_out, name=None):
            super().__init__(name=name)
            self.w = tf.Variable(np.ones((n_in, n_out), np.float32), name="w")
            self.b = tf.Variable(np.zeros(n_out, np.float32), name="b")

        def __call__(self, x):
            return tf.matmul(x, self.w) + self.b

    class Net(tf.Module):
        def __init__(self):
            super().__init__()
            self.blocks = [Dense(3, 4), Dense(4, 2)]
            self.extra = {"scale": tf.Variable(1.0, trainable=False)}
            self.head = keras.layers.Dense(1)
            self.head.build((None, 2))
    net = Net()
    assert net.name == "net"
    assert len(net.variables) == 7 and len(net.trainable_variables) == 6
    assert len(net.non_trainable_variables) == 1
    assert len(net.submodules) == 2
    with pytest.raises(ValueError, match="valid module name"):
        tf.Module(name="bad name")


def test_tf2_module_model_learns_a_linear_function():
    """The TF2 "custom training basics" program: a tf.Module model, a tf.function step."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 1)).astype(np.float32)
    y = 3.0 * x + 2.0 + 0.01 * rng.normal(size=(200, 1)).astype(np.float32)

    class MyModel(tf.Module):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.w = tf.Variable(5.0)
            self.b = tf.Variable(0.0)

        def __call__(self, x):
            return self.w * x + self.b
    model = MyModel()

    def loss(target_y, predicted_y):
        return tf.reduce_mean(tf.square(target_y - predicted_y))

    @tf.function
    def train(x, y, learning_rate):
        with tf.GradientTape() as t:
            current_loss = loss(y, model(x))
        dw, db = t.gradient(current_loss, [model.w, model.b])
        model.w.assign_sub(learning_rate * dw)
        model.b.assign_sub(learning_rate * db)
        return current_loss
    for _ in range(100):
        last = train(x, y, 0.1)
    assert abs(float(model.w) - 3.0) < 0.01 and abs(float(model.b) - 2.0) < 0.01
    assert float(last) < 1e-3


def test_watched_variables_are_the_variables():
    a, b, c = tf.Variable(1.0), tf.Variable(2.0), tf.Variable(3.0, trainable=False)
    with tf.GradientTape() as tape:
        tape.watch(c)
        y = a * b + c
    watched = tape.watched_variables()
    assert len(watched) == 3 and all(isinstance(v, tf.Variable) for v in watched)
    assert {id(v) for v in watched} == {id(a), id(b), id(c)}
    del y


def test_checkpoint_of_a_module_and_a_keras_model(tmp_path):
    import flowjit.keras as keras

    class M(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(np.arange(3, dtype=np.float32))
    m = M()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    opt = tf.optimizers.Adam(0.1)
    opt.apply_gradients(zip([np.ones(3, np.float32)], [m.w]))
    path = tf.train.Checkpoint(module=m, model=model, optimizer=opt).save(str(tmp_path / "ckpt"))
    saved = [w.numpy().copy() for w in model.weights] + [m.w.numpy().copy()]
    m.w.assign(np.zeros(3, np.float32))
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])
    tf.train.Checkpoint(module=m, model=model, optimizer=opt).restore(path)
    for a, b in zip([w.numpy() for w in model.weights] + [m.w.numpy()], saved):
        np.testing.assert_array_equal(a, b)


def test_initializers_and_optimizers_under_tf2_names():
    init = tf.initializers.GlorotUniform(seed=1)
    a = init(shape=(3, 4))
    assert a.shape == (3, 4) and np.all(np.abs(a) <= np.sqrt(6 / 7) + 1e-6)
    np.testing.assert_array_equal(a, tf.initializers.GlorotUniform(seed=1)(shape=(3, 4)))
    assert tf.optimizers.Adam is tf.optimizers.Adam and tf.keras.optimizers.Adam(0.1).learning_rate == \
        pytest.approx(0.1)


def test_tf2_names_elsewhere_and_names_left_out():
    assert tf.compat.v1.placeholder is not None and tf.estimator.Estimator is not None
    assert tf.losses.SparseCategoricalCrossentropy is tf.keras.losses.SparseCategoricalCrossentropy
    assert tf.metrics.Mean is tf.keras.metrics.Mean
    with pytest.raises(tf.errors.UnimplementedError, match=r"tf\.strings .*no string ops"):
        tf.strings
    with pytest.raises(AttributeError, match=r"tf\.no_such_thing"):
        tf.no_such_thing
    assert not hasattr(tf, "ragged")
    import flowjit.compat.v1 as v1
    with pytest.raises(tf.errors.UnimplementedError):       # the same base class in both APIs
        v1.no_such_thing
