"""TF1's eager mode: TensorFlow-Examples' "linear regression (eager API)" with only the
imports changed, and tfe's gradient functions."""
import numpy as np
import pytest

import flowjit.compat.v1 as tf


@pytest.fixture
def eager():
    from flowjit.compat.v1 import eager as eager_module
    tf.reset_default_graph()
    yield
    eager_module._disable_eager_execution()


def test_linear_regression_eager_api(eager, capsys):
    import flowjit.compat.v1.contrib.eager as tfe

    np.random.seed(1)           # the program draws W and b with np.random.randn

    # Set Eager API
    tf.enable_eager_execution()

    # Training Data
    train_X = [3.3, 4.4, 5.5, 6.71, 6.93, 4.168, 9.779, 6.182, 7.59, 2.167,
               7.042, 10.791, 5.313, 7.997, 5.654, 9.27, 3.1]
    train_Y = [1.7, 2.76, 2.09, 3.19, 1.694, 1.573, 3.366, 2.596, 2.53, 1.221,
               2.827, 3.465, 1.65, 2.904, 2.42, 2.94, 1.3]
    n_samples = len(train_X)

    # Parameters
    learning_rate = 0.01
    display_step = 100
    num_steps = 1000

    # Weight and Bias
    W = tfe.Variable(np.random.randn())
    b = tfe.Variable(np.random.randn())

    # Linear regression (Wx + b)
    def linear_regression(inputs):
        return inputs * W + b

    # Mean square error
    def mean_square_fn(model_fn, inputs, labels):
        return tf.reduce_sum(tf.pow(model_fn(inputs) - labels, 2)) / (2 * n_samples)

    # SGD Optimizer
    optimizer = tf.train.GradientDescentOptimizer(learning_rate=learning_rate)

    # Compute gradients
    grad = tfe.implicit_gradients(mean_square_fn)

    # Initial cost, before optimizing
    print("Initial cost= {:.9f}".format(
        mean_square_fn(linear_regression, train_X, train_Y)),
        "W=", W.numpy(), "b=", b.numpy())

    # Training
    for step in range(num_steps):

        optimizer.apply_gradients(grad(linear_regression, train_X, train_Y))

        if (step + 1) % display_step == 0 or step == 0:
            print("Epoch:", '%04d' % (step + 1), "cost=",
                  "{:.9f}".format(mean_square_fn(linear_regression, train_X, train_Y)),
                  "W=", W.numpy(), "b=", b.numpy())

    assert tf.executing_eagerly()
    out = capsys.readouterr().out
    assert out.startswith("Initial cost= ") and "Epoch: 1000 cost=" in out
    # the least-squares line through these points: W = 0.2536, b = 0.7988, cost 0.0769;
    # 1000 steps of gradient descent at 0.01 get most of the way from a random start
    x, y = np.array(train_X), np.array(train_Y)
    best = np.polyfit(x, y, 1)
    final_cost = float(mean_square_fn(linear_regression, train_X, train_Y))
    best_cost = float(np.sum((best[0] * x + best[1] - y) ** 2) / (2 * n_samples))
    initial_cost = float(out.split("Initial cost= ")[1].split()[0])
    assert final_cost < initial_cost and final_cost < best_cost + 0.05


def test_tfe_gradient_functions_and_graph_only_names(eager):
    import flowjit.compat.v1.contrib.eager as tfe
    tf.enable_eager_execution()
    w = tfe.Variable(3.0)
    value, gvs = tfe.implicit_value_and_gradients(lambda x: w * w * x)(2.0)
    assert float(value) == 18.0 and float(gvs[0][0]) == 12.0 and gvs[0][1] is w
    dx, dy = tfe.gradients_function(lambda x, y: x * x * y)(3.0, 2.0)
    assert (float(dx), float(dy)) == (12.0, 9.0)
    assert float(tf.matmul([[1.0, 2.0]], [[3.0], [4.0]])[0, 0]) == 11.0
    with pytest.raises(RuntimeError, match="placeholder is not compatible with eager execution"):
        tf.placeholder(tf.float32)
    opt = tf.train.AdamOptimizer(0.1)
    opt.minimize(lambda: (w - 1.0) * (w - 1.0))
    assert float(w) < 3.0
    with pytest.raises(tf.errors.UnimplementedError, match="RMSPropOptimizer"):
        tf.train.RMSPropOptimizer(0.1)


def test_eager_mode_must_come_first():
    from flowjit.compat.v1 import eager as eager_module
    tf.reset_default_graph()
    tf.constant(1.0)
    with pytest.raises(ValueError, match="program startup"):
        tf.enable_eager_execution()
    assert not eager_module._SAVED
    tf.reset_default_graph()
