"""Keras's "Simple MNIST convnet" on flowjit.keras: two Conv2D/MaxPooling2D blocks,
Dropout and a softmax Dense, about 99% on MNIST.

    python examples/keras_mnist_convnet.py               # bundled digits, resampled to 28x28
    python examples/keras_mnist_convnet.py --mnist DIR   # real MNIST (IDX files or mnist.npz)
"""
import argparse

import numpy as np

import flowjit.keras as keras
from flowjit.keras import layers
import keras_data


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--mnist", metavar="DIR", help="real MNIST in DIR (default: bundled digits)")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=None, help="quick mode: at most N steps per epoch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", type=int, default=1)
    args = ap.parse_args(argv)
    keras.utils.set_random_seed(args.seed)

    num_classes = 10
    input_shape = (28, 28, 1)
    ((x_train, y_train), (x_test, y_test)), name = keras_data.load(args.mnist)
    print(f"data: {name}")
    x_train = np.expand_dims(x_train.astype("float32") / 255, -1)
    x_test = np.expand_dims(x_test.astype("float32") / 255, -1)
    print("x_train shape:", x_train.shape)
    print(x_train.shape[0], "train samples")
    print(x_test.shape[0], "test samples")
    y_train = keras.utils.to_categorical(y_train, num_classes)
    y_test = keras.utils.to_categorical(y_test, num_classes)

    model = keras.Sequential([
        keras.Input(shape=input_shape),
        layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(num_classes, activation="softmax"),
    ])
    model.summary()

    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    history = model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, validation_split=0.1,
                        steps_per_epoch=args.steps, verbose=args.verbose)
    score = model.evaluate(x_test, y_test, verbose=0)
    print("Test loss:", score[0])
    print("Test accuracy:", score[1])
    return {"test_accuracy": score[1], "test_loss": score[0], "final_loss": history.history["loss"][-1]}


if __name__ == "__main__":
    main()
