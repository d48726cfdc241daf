"""TensorFlow 2's beginner quickstart, as its readers run it, on flowjit.keras.

    python examples/keras_quickstart.py               # bundled digits, resampled to 28x28
    python examples/keras_quickstart.py --mnist DIR   # real MNIST (IDX files or mnist.npz)

Flatten -> Dense(128, relu) -> Dropout(0.2) -> Dense(10) logits, Adam, sparse
categorical crossentropy from logits; `fit` compiles one training step (forward,
backward and update together) and prints Keras's progress lines.
"""
import argparse

import flowjit as tf
import keras_data


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--mnist", metavar="DIR", help="real MNIST in DIR (default: bundled digits)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=None, help="quick mode: at most N steps per epoch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", type=int, default=1)
    args = ap.parse_args(argv)
    tf.keras.utils.set_random_seed(args.seed)

    ((x_train, y_train), (x_test, y_test)), name = keras_data.load(args.mnist)
    print(f"data: {name}, {len(x_train)} train / {len(x_test)} test images")
    x_train, x_test = x_train / 255.0, x_test / 255.0

    model = tf.keras.models.Sequential([
        tf.keras.layers.Flatten(input_shape=(28, 28)),
        tf.keras.layers.Dense(128, activation="relu"),
        tf.keras.layers.Dropout(0.2),
        tf.keras.layers.Dense(10),
    ])
    predictions = model(x_train[:1]).numpy()
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    print("untrained loss on one example:", float(loss_fn(y_train[:1], predictions)))

    model.compile(optimizer="adam", loss=loss_fn, metrics=["accuracy"])
    history = model.fit(x_train, y_train, epochs=args.epochs, steps_per_epoch=args.steps, verbose=args.verbose)
    loss, accuracy = model.evaluate(x_test, y_test, verbose=2)

    probability_model = tf.keras.Sequential([model, tf.keras.layers.Softmax()])
    print("class probabilities of the first test image:", probability_model(x_test[:1]).numpy().round(3))
    print(f"test accuracy {accuracy:.4f}, test loss {loss:.4f}")
    return {"test_accuracy": accuracy, "test_loss": loss, "final_loss": history.history["loss"][-1]}


if __name__ == "__main__":
    main()
