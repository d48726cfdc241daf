"""A TF2 MLP (64-128-10, ReLU) fed by a tf.data pipeline, trained with @fj.jit and
GradientTape on the 8x8 digits scikit-learn ships (MNIST with --mnist DIR).

The input pipeline is TensorFlow's usual one:

    tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(len(x_train), seed=...).batch(batch_size).prefetch(tf.data.AUTOTUNE)

Each epoch draws a new order; each batch comes out as a pair of fj Tensors that the
jitted training step (forward, loss, backward, Adam update: compiled once) takes. The
test set goes through `from_tensor_slices(...).batch(256)` and a jitted step that
counts correct predictions.

    python examples/tf2_data_pipeline.py [--epochs 15] [--batch-size 64] [--lr 0.005] [--steps N]
"""
import time

import common
import flowjit as tf


def build(n_in, hidden, seed):
    tf.random.set_seed(seed)
    w1 = tf.Variable(tf.random.truncated_normal((n_in, hidden), stddev=0.1, seed=1), name="w1")
    b1 = tf.Variable(tf.zeros((hidden,)), name="b1")
    w2 = tf.Variable(tf.random.truncated_normal((hidden, 10), stddev=0.1, seed=2), name="w2")
    b2 = tf.Variable(tf.zeros((10,)), name="b2")
    return [w1, b1, w2, b2]


def model(params, x):
    w1, b1, w2, b2 = params
    return tf.nn.relu(x @ w1 + b1) @ w2 + b2


def main(argv=None):
    ap = common.parser(__doc__, epochs=15, batch_size=64, lr=0.005)
    ap.add_argument("--hidden", type=int, default=128)
    args = ap.parse_args(argv)
    data = common.load_data(args)
    x_train, y_train = data.train.images, data.train.labels.argmax(1)      # class ids
    x_test, y_test = data.test.images, data.test.labels.argmax(1)

    train_ds = (tf.data.Dataset.from_tensor_slices((x_train, y_train))
                .shuffle(len(x_train), seed=args.seed)
                .batch(args.batch_size)
                .prefetch(tf.data.AUTOTUNE))
    test_ds = tf.data.Dataset.from_tensor_slices((x_test, y_test)).batch(256)
    print(f"train: {len(x_train)} examples, {len(train_ds)} batches of {args.batch_size} per epoch; "
          f"element_spec {train_ds.element_spec}")

    with common.session(args):
        params = build(x_train.shape[1], args.hidden, args.seed)
        opt = tf.optimizers.Adam(args.lr)

        @tf.jit
        def train_step(x, y):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(params, x)))
            opt.apply_gradients(zip(tape.gradient(loss, params), params))
            return loss

        @tf.jit
        def correct(x, y):
            return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(model(params, x), axis=1), y), tf.float32))

        steps, loss, t0 = 0, float("nan"), time.perf_counter()
        for epoch in range(args.epochs):
            total, batches = 0.0, 0
            for x, y in train_ds:
                loss = float(train_step(x, y))
                total += loss
                batches += 1
                steps += 1
                if args.steps is not None and steps >= args.steps:
                    break
            if not args.no_progress:
                print(f"epoch {epoch + 1}: mean loss {total / max(batches, 1):.4f} over {batches} batches")
            if args.steps is not None and steps >= args.steps:
                break
        secs = time.perf_counter() - t0

        right = sum(float(correct(x, y)) for x, y in test_ds)
        acc = right / len(x_test)
        return common.report("tf2_data_pipeline", {"test_accuracy": acc, "final_loss": loss, "epochs": epoch + 1},
                             secs, steps)


if __name__ == "__main__":
    main()
