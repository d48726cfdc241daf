"""flowjit.keras end to end: the classic Keras programs (verbatim but for the import
line, on MNIST-format files made in the test from the bundled digits), and the
Model/Sequential/functional contract: weights, summary, fit == a hand-made jitted
step, no recompile for the last batch, eager == compiled."""
import io
import contextlib
import os
import re

import numpy as np
import pytest

import flowjit as fj
import flowjit.keras as keras
from flowjit.keras import layers


@pytest.fixture(scope="module")
def keras_home(tmp_path_factory):
    """A KERAS_HOME whose datasets/mnist.npz holds the bundled digits resampled to 28x28
    uint8 (the MNIST format Keras caches), 1438 train and 359 test images."""
    home = tmp_path_factory.mktemp("keras_home")
    (x_train, y_train), (x_test, y_test) = keras.datasets.digits.load_data()
    os.makedirs(home / "datasets")
    np.savez(home / "datasets" / "mnist.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    old = os.environ.get("KERAS_HOME")
    os.environ["KERAS_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("KERAS_HOME", None)
    else:
        os.environ["KERAS_HOME"] = old


def run_printing(fn):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        out = fn()
    return out, buf.getvalue()


def test_tf2_beginner_quickstart(keras_home):
    """tensorflow.org's "TensorFlow 2 quickstart for beginners", `tensorflow` -> `flowjit`."""
    def program():
        import flowjit as tf
        tf.random.set_seed(0)
        keras.utils.set_random_seed(0)
        mnist = tf.keras.datasets.mnist

        (x_train, y_train), (x_test, y_test) = mnist.load_data()
        x_train, x_test = x_train / 255.0, x_test / 255.0

        model = tf.keras.models.Sequential([
            tf.keras.layers.Flatten(input_shape=(28, 28)),
            tf.keras.layers.Dense(128, activation='relu'),
            tf.keras.layers.Dropout(0.2),
            tf.keras.layers.Dense(10)
        ])
        predictions = model(x_train[:1]).numpy()
        tf.nn.softmax(predictions).numpy()
        loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        first_loss = loss_fn(y_train[:1], predictions).numpy()
        model.compile(optimizer='adam',
                      loss=loss_fn,
                      metrics=['accuracy'])
        history = model.fit(x_train, y_train, epochs=5)
        result = model.evaluate(x_test, y_test, verbose=2)
        probability_model = tf.keras.Sequential([
            model,
            tf.keras.layers.Softmax()
        ])
        probs = probability_model(x_test[:5])
        return model, first_loss, history, result, probs, y_test
    (model, first_loss, history, (loss, acc), probs, y_test), out = run_printing(program)
    assert model.count_params() == 101_770                   # Keras's count for this model
    assert 1.0 < first_loss < 5.0                            # about -log(1/10) for an untrained model
    assert len(history.history["loss"]) == 5 and history.history["loss"][-1] < history.history["loss"][0]
    assert acc > 0.85, out
    probs = probs.numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert "Epoch 5/5" in out and "45/45" in out
    assert " - accuracy: " in out and " - loss: " in out


def test_keras_simple_mnist_convnet(keras_home):
    """keras.io's "Simple MNIST convnet", `import keras` -> `import flowjit.keras as keras`."""
    def program():
        import numpy as np
        import flowjit.keras as keras
        from flowjit.keras import layers
        keras.utils.set_random_seed(1)

        # Model / data parameters
        num_classes = 10
        input_shape = (28, 28, 1)

        # Load the data and split it between train and test sets
        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()

        # Scale images to the [0, 1] range
        x_train = x_train.astype("float32") / 255
        x_test = x_test.astype("float32") / 255
        # Make sure images have shape (28, 28, 1)
        x_train = np.expand_dims(x_train, -1)
        x_test = np.expand_dims(x_test, -1)
        print("x_train shape:", x_train.shape)
        print(x_train.shape[0], "train samples")
        print(x_test.shape[0], "test samples")

        # convert class vectors to binary class matrices
        y_train = keras.utils.to_categorical(y_train, num_classes)
        y_test = keras.utils.to_categorical(y_test, num_classes)

        model = keras.Sequential(
            [
                keras.Input(shape=input_shape),
                layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
                layers.MaxPooling2D(pool_size=(2, 2)),
                layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
                layers.MaxPooling2D(pool_size=(2, 2)),
                layers.Flatten(),
                layers.Dropout(0.5),
                layers.Dense(num_classes, activation="softmax"),
            ]
        )

        model.summary()

        batch_size = 128
        epochs = 15

        model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])

        model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, validation_split=0.1)

        score = model.evaluate(x_test, y_test, verbose=0)
        print("Test loss:", score[0])
        print("Test accuracy:", score[1])
        return model, score
    (model, score), out = run_printing(program)
    assert " Total params: 34,826 (136.04 KB)" in out          # Keras's summary of this model
    assert re.search(r"│ conv2d(_\d+)? \(Conv2D\) +│ \(None, 26, 26, 32\) +│ +320 │", out)
    assert re.search(r"│ dense(_\d+)? \(Dense\) +│ \(None, 10\) +│ +16,010 │", out)
    assert "val_accuracy" in out and "Epoch 15/15" in out
    assert score[1] > 0.85, out


def test_subclassed_model_custom_training_loop(keras_home):
    """TensorFlow 2's "quickstart for experts" verbatim but for `tensorflow` -> `flowjit`
    (and 3 epochs instead of 5): a subclassed Model, tf.data pipelines, a GradientTape
    training step in tf.function, Keras metrics updated inside the compiled step."""
    import flowjit as tf
    keras.utils.set_random_seed(2)
    tf.random.set_seed(2)

    from flowjit.keras.layers import Dense, Flatten, Conv2D
    from flowjit.keras import Model

    mnist = tf.keras.datasets.mnist

    (x_train, y_train), (x_test, y_test) = mnist.load_data()
    x_train, x_test = x_train / 255.0, x_test / 255.0

    # Add a channels dimension
    x_train = x_train[..., tf.newaxis].astype("float32")
    x_test = x_test[..., tf.newaxis].astype("float32")

    train_ds = tf.data.Dataset.from_tensor_slices(
        (x_train, y_train)).shuffle(10000).batch(32)

    test_ds = tf.data.Dataset.from_tensor_slices((x_test, y_test)).batch(32)

    class MyModel(Model):
        def __init__(self):
            super().__init__()
            self.conv1 = Conv2D(32, 3, activation='relu')
            self.flatten = Flatten()
            self.d1 = Dense(128, activation='relu')
            self.d2 = Dense(10)

        def call(self, x):
            x = self.conv1(x)
            x = self.flatten(x)
            x = self.d1(x)
            return self.d2(x)

    # Create an instance of the model
    model = MyModel()

    loss_object = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    optimizer = tf.keras.optimizers.Adam()

    train_loss = tf.keras.metrics.Mean(name='train_loss')
    train_accuracy = tf.keras.metrics.SparseCategoricalAccuracy(name='train_accuracy')

    test_loss = tf.keras.metrics.Mean(name='test_loss')
    test_accuracy = tf.keras.metrics.SparseCategoricalAccuracy(name='test_accuracy')

    @tf.function
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            # training=True is only needed if there are layers with different
            # behavior during training versus inference (e.g. Dropout).
            predictions = model(images, training=True)
            loss = loss_object(labels, predictions)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))

        train_loss(loss)
        train_accuracy(labels, predictions)

    @tf.function
    def test_step(images, labels):
        # training=False is only needed if there are layers with different
        # behavior during training versus inference (e.g. Dropout).
        predictions = model(images, training=False)
        t_loss = loss_object(labels, predictions)

        test_loss(t_loss)
        test_accuracy(labels, predictions)

    EPOCHS = 3

    lines = []
    for epoch in range(EPOCHS):
        # Reset the metrics at the start of the next epoch
        train_loss.reset_state()
        train_accuracy.reset_state()
        test_loss.reset_state()
        test_accuracy.reset_state()

        for images, labels in train_ds:
            train_step(images, labels)

        for test_images, test_labels in test_ds:
            test_step(test_images, test_labels)

        lines.append(
            f'Epoch {epoch + 1}, '
            f'Loss: {train_loss.result():0.2f}, '
            f'Accuracy: {train_accuracy.result() * 100:0.2f}, '
            f'Test Loss: {test_loss.result():0.2f}, '
            f'Test Accuracy: {test_accuracy.result() * 100:0.2f}'
        )
    assert all(isinstance(v, fj.Variable) for v in model.trainable_variables)
    assert len(model.trainable_variables) == 6
    assert lines[-1].startswith("Epoch 3, Loss: ")
    assert float(test_accuracy.result()) > 0.9, lines
    assert float(train_loss.result()) < 0.5


def test_lstm_sequence_classifier():
    """An Embedding + LSTM + sigmoid classifier as in Keras's IMDB LSTM example, on
    sequences where the label says whether token 3 occurs more often than token 4."""
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    max_features, maxlen = 20, 12
    x = rng.integers(0, max_features, size=(1200, maxlen))
    y = ((x == 3).sum(1) > (x == 4).sum(1)).astype("float32")
    x_train, y_train, x_test, y_test = x[:1000], y[:1000], x[1000:], y[1000:]

    model = keras.Sequential()
    model.add(layers.Embedding(max_features, 16))
    model.add(layers.LSTM(16))
    model.add(layers.Dense(1, activation="sigmoid"))
    model.compile(loss="binary_crossentropy", optimizer=keras.optimizers.Adam(0.01), metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=32, epochs=8, validation_data=(x_test, y_test), verbose=0)
    loss, acc = model.evaluate(x_test, y_test, verbose=0)
    assert acc > 0.85
    assert model.count_params() == 20 * 16 + 4 * (16 * (16 + 16) + 16) + 17


# --- the contract ------------------------------------------------------------------------
def small_mlp(seed=0, **dense_kwargs):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6,)), layers.Dense(5, activation="relu", **dense_kwargs),
                             layers.Dense(3)])


def toy_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0)
    return x, y


def test_fit_equals_a_hand_made_jitted_step():
    """Same initial weights, same batches: fit's per-epoch losses and final weights equal
    a training loop written with fj.jit and GradientTape by hand."""
    x, y = toy_data()
    model = small_mlp(0)
    w0 = model.get_weights()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    hist = model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0).history["loss"]

    ws = [fj.Variable(w) for w in w0]

    @fj.jit
    def step(xb, yb):
        with fj.GradientTape() as tape:
            h = fj.nn.relu(fj.matmul(xb, ws[0]) + ws[1])
            logits = fj.matmul(h, ws[2]) + ws[3]
            loss = fj.reduce_mean(fj.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=logits))
        grads = tape.gradient(loss, ws)
        for w, g in zip(ws, grads):
            w.assign_sub(0.1 * g)
        return loss

    mine = []
    for _ in range(3):
        losses = [float(step(x[i:i + 16], y[i:i + 16])) for i in range(0, 64, 16)]
        mine.append(np.mean(losses))
    np.testing.assert_allclose(hist, mine, rtol=1e-5)
    for a, b in zip(model.get_weights(), ws):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-5, atol=1e-6)


def test_last_partial_batch_does_not_trace_again():
    x, y = toy_data(70)                  # batches of 16, 16, 16, 16 and 6
    model = small_mlp(1)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    fj.reset_stats()
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert fj.stats()["traces"] == 1
    x1, y1 = toy_data(65)                # a lone last example joins the batch before it
    model.fit(x1, y1, batch_size=16, epochs=1, verbose=0)
    assert fj.stats()["traces"] == 1


def test_run_eagerly_equals_compiled():
    x, y = toy_data()
    results = []
    for eager in (False, True):
        model = small_mlp(4)
        model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"],
                      run_eagerly=eager)
        model.layers[-1].activation = keras.activations.get("softmax")
        model.layers[-1].activation_name = "softmax"
        h = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history
        results.append((h["loss"], h["accuracy"], model.get_weights()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    np.testing.assert_allclose(results[0][1], results[1][1])
    for a, b in zip(results[0][2], results[1][2]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_functional_model_with_two_inputs_and_shared_layer():
    keras.utils.set_random_seed(5)
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    shared = layers.Dense(3, activation="tanh")
    merged = layers.concatenate([shared(a), shared(b)])
    out = layers.Dense(1)(merged)
    model = keras.Model(inputs=[a, b], outputs=out)
    assert [type(l).__name__ for l in model.layers] == ["InputLayer", "Dense", "InputLayer", "Concatenate", "Dense"] \
        or sorted(type(l).__name__ for l in model.layers) == ["Concatenate", "Dense", "Dense", "InputLayer", "InputLayer"]
    assert model.count_params() == 15 + 7
    xa, xb = np.ones((2, 4), np.float32), np.full((2, 4), 2, np.float32)
    k, bias = shared.get_weights()
    w, c = model.layers[-1].get_weights()
    ref = np.concatenate([np.tanh(xa @ k + bias), np.tanh(xb @ k + bias)], 1) @ w + c
    np.testing.assert_allclose(model([xa, xb]).numpy(), ref, rtol=1e-5)
    np.testing.assert_allclose(model.predict([xa, xb], verbose=0), ref, rtol=1e-5)
    model.compile("sgd", "mse")
    model.fit([xa, xb], np.zeros((2, 1), np.float32), verbose=0, epochs=2)


def test_weights_roundtrip_and_freezing(tmp_path):
    model = small_mlp(6)
    x, y = toy_data()
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    other = small_mlp(7)
    assert not np.allclose(other.get_weights()[0], model.get_weights()[0])
    other.load_weights(path)
    for a, b in zip(other.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="expected 4 arrays"):
        other.set_weights(other.get_weights()[:2])
    with pytest.raises(ValueError, match="shape"):
        other.set_weights([np.zeros((1, 1))] + other.get_weights()[1:])
    frozen = model.layers[0]
    frozen.trainable = False
    assert len(model.trainable_weights) == 2 and len(model.non_trainable_weights) == 2
    before = frozen.get_weights()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=1, verbose=0)
    for a, b in zip(before, frozen.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_summary_of_a_functional_model_and_an_unbuilt_one():
    keras.utils.set_random_seed(8)
    i = keras.Input((8,))
    m = keras.Model(i, layers.Dense(3)(i), name="tiny")
    _, out = run_printing(m.summary)
    assert 'Model: "tiny"' in out and "(None, 8)" in out and "(None, 3)" in out
    assert " Total params: 27 (108.00 B)" in out
    unbuilt = keras.Sequential([layers.Dense(4)])
    _, out = run_printing(unbuilt.summary)
    assert "0 (unbuilt)" in out and "?" in out


def test_inputs_from_a_generator_and_an_fj_dataset():
    x, y = toy_data(64)
    model = small_mlp(9)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])

    def batches():
        while True:
            for i in range(0, 64, 16):
                yield x[i:i + 16], y[i:i + 16]
    h = model.fit(batches(), steps_per_epoch=4, epochs=2, verbose=0)
    assert len(h.history["loss"]) == 2
    ds = fj.data.Dataset(x, y)
    h = model.fit(ds, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(h.history["loss"][0])


def test_callbacks_in_fit(tmp_path):
    x, y = toy_data(64)
    model = small_mlp(10)
    model.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=1)
    csv = keras.callbacks.CSVLogger(str(tmp_path / "log.csv"))
    h = model.fit(x, y, epochs=10, verbose=0, callbacks=[stop, csv])
    assert len(h.history["loss"]) == 2          # a learning rate of 0 never improves
    assert open(tmp_path / "log.csv").read().startswith("epoch,loss")
    sched = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.5 ** epoch)
    model.fit(x, y, epochs=3, verbose=0, callbacks=[sched])
    assert model.optimizer.learning_rate == pytest.approx(0.25)


def test_errors_name_the_problem():
    model = small_mlp(11)
    x, y = toy_data()
    with pytest.raises(RuntimeError, match="compile"):
        model.fit(x, y)
    model.compile("adam", "mse")
    with pytest.raises(ValueError, match="64 examples but y has 10"):
        model.fit(x, y[:10], verbose=0)
    with pytest.raises(Exception, match=r"\b7\b"):
        model.predict(np.ones((2, 7), np.float32), verbose=0)


def test_on_batch_methods_accumulate_like_keras():
    x, y = toy_data(32)
    model = small_mlp(12)
    model.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    before = model.test_on_batch(x, y, return_dict=True)
    assert set(before) == {"loss", "accuracy"}
    model.reset_metrics()
    l1, a1 = model.train_on_batch(x, y)
    l2, _ = model.train_on_batch(x, y)
    assert l2 < before["loss"] and 0 <= a1 <= 1
    np.testing.assert_allclose(model.predict_on_batch(x), model(x).numpy(), rtol=1e-6)


@pytest.mark.skipif(not __import__("importlib").util.find_spec("tensorboard"), reason="needs tensorboard")
def test_tensorboard_callback_writes_epoch_scalars_and_the_step_graph(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    x, y = toy_data(64)
    model = small_mlp(13)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x, y, epochs=2, verbose=0, validation_split=0.25,
              callbacks=[keras.callbacks.TensorBoard(log_dir=str(tmp_path))])
    train = EventAccumulator(str(tmp_path / "train"))
    train.Reload()
    assert [e.step for e in train.Scalars("epoch_loss")] == [0, 1]
    assert "epoch_accuracy" in train.Tags()["scalars"] and train.Graph().node
    val = EventAccumulator(str(tmp_path / "validation"))
    val.Reload()
    assert len(val.Scalars("epoch_loss")) == 2


def test_save_and_load_model_round_trip(tmp_path):
    x, y = toy_data(64)
    model = small_mlp(14)
    model.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert loaded.compiled and loaded.metrics_names == ["loss", "accuracy"]
    assert isinstance(loaded.optimizer, keras.optimizers.Adam)
    assert loaded.optimizer.learning_rate == pytest.approx(0.01)
    loaded.fit(x, y, epochs=1, verbose=0)                     # trains on after loading

    a, b = keras.Input((4,)), keras.Input((3,))
    h = layers.Dense(5, activation="tanh")(a)
    out = layers.Dense(2)(layers.concatenate([h, b]))
    functional = keras.Model([a, b], [out, h])
    nested = keras.Sequential([small_mlp(15), layers.Softmax()])
    for m, args in ((functional, [np.ones((3, 4), np.float32), np.ones((3, 3), np.float32)]),
                    (nested, np.ones((3, 6), np.float32))):
        m.save(str(tmp_path / "m.keras"))
        back = keras.models.load_model(str(tmp_path / "m.keras"))
        got, want = back(args), m(args)
        for g, w in zip(got if isinstance(got, list) else [got], want if isinstance(want, list) else [want]):
            np.testing.assert_array_equal(g.numpy(), w.numpy())


def test_save_refusals_and_checkpoint_callback(tmp_path):
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = layers.Dense(2)

        def call(self, x):
            return self.d(x)
    sub = Sub()
    sub(np.ones((1, 3), np.float32))
    with pytest.raises(NotImplementedError, match="subclassed model"):
        sub.save(str(tmp_path / "s.keras"))
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a model file"):
        keras.models.load_model(str(tmp_path / "junk.keras"))
    x, y = toy_data(64)
    model = small_mlp(16)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    best = str(tmp_path / "best.keras")
    model.fit(x, y, epochs=2, verbose=0, validation_split=0.25,
              callbacks=[keras.callbacks.ModelCheckpoint(best, save_best_only=True)])
    assert keras.models.load_model(best).count_params() == model.count_params()
