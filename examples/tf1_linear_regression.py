"""Linear regression y = 0.1 x + 0.3 written in TensorFlow 1 style (placeholders,
Variables, GradientDescentOptimizer, Session.run with feed_dict) and run by flowjit
with only the import changed: `sess.run(train, feed_dict=...)` compiles the training
subgraph once (forward and backward function) and reuses it for every batch size.

    python examples/tf1_linear_regression.py [--epochs 50] [--batch-size 10] [--lr 0.5]
        [--device /cpu:0] [--logdir DIR] [--steps N]

(The data are 100 generated points, so --mnist does not apply here.)
"""
import time

import numpy as np

import common
import flowjit as fj
import flowjit.compat.v1 as tf


def main(argv=None):
    ap = common.parser(__doc__, epochs=50, batch_size=10, lr=0.5)
    ap.add_argument("--n", type=int, default=100, help="number of data points")
    args = ap.parse_args(argv)

    rng = np.random.RandomState(0)
    train_X = rng.rand(args.n).astype(np.float32)
    train_Y = train_X * 0.1 + 0.3

    # --- the TF1 program ------------------------------------------------------------
    tf.reset_default_graph()
    with tf.device(args.device):
        X = tf.placeholder(tf.float32, [None], name="X")
        Y = tf.placeholder(tf.float32, [None], name="Y")
        W = tf.Variable(tf.random_uniform([1], -1.0, 1.0, seed=1), name="weight")
        b = tf.Variable(tf.zeros([1]), name="bias")
        pred = tf.add(tf.multiply(X, W), b)
        cost = tf.reduce_mean(tf.square(pred - Y))
        train = tf.train.GradientDescentOptimizer(args.lr).minimize(cost)
    tf.summary.scalar("cost", cost)
    merged = tf.summary.merge_all()
    init = tf.global_variables_initializer()

    per_epoch = -(-args.n // args.batch_size)
    steps = args.epochs * per_epoch if args.steps is None else min(args.steps, args.epochs * per_epoch)
    bar = common.progress(steps, "train", args)
    t0 = time.perf_counter()
    with tf.Session() as sess:
        writer = tf.summary.FileWriter(args.logdir, sess.graph) if args.logdir else None
        sess.run(init)
        step = 0
        while step < steps:
            order = rng.permutation(args.n)
            for s in range(0, args.n, args.batch_size):
                if step == steps:
                    break
                idx = order[s:s + args.batch_size]
                sess.run(train, feed_dict={X: train_X[idx], Y: train_Y[idx]})
                step += 1
                if bar is not None:
                    bar.update(1)
            if writer is not None:
                writer.add_summary(sess.run(merged, feed_dict={X: train_X, Y: train_Y}), step)
        w_val, b_val = sess.run([W, b])
        final_cost = sess.run(cost, feed_dict={X: train_X, Y: train_Y})
        if writer is not None:
            writer.close()
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t0
    s = fj.stats()
    print(f"final: W={w_val[0]:.4f} (true 0.1)  b={b_val[0]:.4f} (true 0.3)  cost={final_cost:.2e}  "
          f"[{steps} steps in {elapsed:.2f}s, traces={s['traces']}, compiles={s['compiles']}, "
          f"compile {s['compile_seconds']:.2f}s]")
    return float(w_val[0]), float(b_val[0])


if __name__ == "__main__":
    main()
