"""Softmax regression on the 8x8 handwritten digits, written as the classic TensorFlow 1
MNIST tutorial (placeholders, `y = softmax(xW + b)`, cross-entropy, gradient descent,
`equal/argmax/cast/reduce_mean` accuracy) and run by flowjit with only the import
changed. `fj.data.load_digits()` has the shape of TF1's `input_data.read_data_sets`.

    python examples/tf1_softmax_digits.py [--epochs 20] [--batch-size 100] [--lr 0.5]
"""
import argparse
import time

import flowjit as fj
import flowjit.compat.v1 as tf


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.5)
    args = ap.parse_args(argv)

    mnist = fj.data.load_digits()

    # --- the TF1 program ------------------------------------------------------------
    x = tf.placeholder(tf.float32, [None, 64])
    W = tf.Variable(tf.zeros([64, 10]))
    b = tf.Variable(tf.zeros([10]))
    y = tf.nn.softmax(tf.matmul(x, W) + b)
    y_ = tf.placeholder(tf.float32, [None, 10])
    cross_entropy = tf.reduce_mean(-tf.reduce_sum(y_ * tf.log(y), reduction_indices=[1]))
    train_step = tf.train.GradientDescentOptimizer(args.lr).minimize(cross_entropy)
    correct_prediction = tf.equal(tf.argmax(y, 1), tf.argmax(y_, 1))
    accuracy = tf.reduce_mean(tf.cast(correct_prediction, tf.float32))

    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    steps = args.epochs * (mnist.train.num_examples // args.batch_size)
    t0 = time.perf_counter()
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        it = tqdm(range(steps), desc="train", mininterval=0.5) if tqdm else range(steps)
        for i in it:
            batch_xs, batch_ys = mnist.train.next_batch(args.batch_size)
            _, loss = sess.run([train_step, cross_entropy], feed_dict={x: batch_xs, y_: batch_ys})
            if tqdm and i % 20 == 0:
                it.set_postfix(loss=f"{loss:.4f}")
        elapsed = time.perf_counter() - t0
        acc = sess.run(accuracy, feed_dict={x: mnist.test.images, y_: mnist.test.labels})
    s = fj.stats()
    print(f"test accuracy {acc:.4f}  final loss {loss:.4f}  [{steps} steps, {elapsed:.2f}s, "
          f"traces={s['traces']}, compiles={s['compiles']}, compile {s['compile_seconds']:.2f}s]")
    return float(acc)


if __name__ == "__main__":
    main()
