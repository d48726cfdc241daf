"""Softmax regression on the 8x8 handwritten digits, written as the classic TensorFlow 1
MNIST tutorial (placeholders, `y = softmax(xW + b)`, cross-entropy, gradient descent,
`equal/argmax/cast/reduce_mean` accuracy) and run by flowjit with only the import
changed. `fj.data.load_digits()` has the shape of TF1's `input_data.read_data_sets`.

    python examples/tf1_softmax_digits.py [--epochs 20] [--batch-size 100] [--lr 0.5]
        [--mnist DIR] [--logdir DIR] [--device /cpu:0] [--steps N]

With --logdir the loss is a TF1 summary (`tf.summary.scalar` + `merge_all`) written by
`tf.summary.FileWriter` together with the graph.
"""
import time

import common
import flowjit as fj
import flowjit.compat.v1 as tf


def main(argv=None):
    args = common.parser(__doc__, epochs=20, batch_size=100, lr=0.5).parse_args(argv)
    mnist = common.load_data(args)
    pixels = mnist.train.images.shape[1]

    # --- the TF1 program ------------------------------------------------------------
    tf.reset_default_graph()
    with tf.device(args.device):
        x = tf.placeholder(tf.float32, [None, pixels])
        W = tf.Variable(tf.zeros([pixels, 10]))
        b = tf.Variable(tf.zeros([10]))
        y = tf.nn.softmax(tf.matmul(x, W) + b)
        y_ = tf.placeholder(tf.float32, [None, 10])
        cross_entropy = tf.reduce_mean(-tf.reduce_sum(y_ * tf.log(y), reduction_indices=[1]))
        train_step = tf.train.GradientDescentOptimizer(args.lr).minimize(cross_entropy)
        correct_prediction = tf.equal(tf.argmax(y, 1), tf.argmax(y_, 1))
        accuracy = tf.reduce_mean(tf.cast(correct_prediction, tf.float32))
    tf.summary.scalar("loss", cross_entropy)
    merged = tf.summary.merge_all()

    steps = common.num_steps(args, mnist.train.num_examples)
    bar = common.progress(steps, "train", args)
    t0 = time.perf_counter()
    with tf.Session() as sess:
        writer = tf.summary.FileWriter(args.logdir, sess.graph) if args.logdir else None
        sess.run(tf.global_variables_initializer())
        for i in range(steps):
            batch_xs, batch_ys = mnist.train.next_batch(args.batch_size)
            feed = {x: batch_xs, y_: batch_ys}
            if writer is not None and i % 10 == 0:
                _, loss, summary = sess.run([train_step, cross_entropy, merged], feed_dict=feed)
                writer.add_summary(summary, i)
            else:
                _, loss = sess.run([train_step, cross_entropy], feed_dict=feed)
            if bar is not None:
                bar.update(1)
                if i % 20 == 0:
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        elapsed = time.perf_counter() - t0
        acc = sess.run(accuracy, feed_dict={x: mnist.test.images, y_: mnist.test.labels})
        if writer is not None:
            writer.close()
    if bar is not None:
        bar.close()
    common.report("tf1_softmax_digits", {"test_accuracy": float(acc), "final_loss": float(loss)},
                  elapsed, steps)
    return float(acc)


if __name__ == "__main__":
    main()
