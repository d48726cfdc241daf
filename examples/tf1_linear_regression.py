"""Linear regression y = 0.1 x + 0.3 written in TensorFlow 1 style (placeholders,
Variables, GradientDescentOptimizer, Session.run with feed_dict) and run by flowjit
with only the import changed: `sess.run(train, feed_dict=...)` compiles the training
subgraph once (forward and backward function) and reuses it for every batch size.

    python examples/tf1_linear_regression.py [--epochs 50] [--batch-size 10] [--lr 0.5]
"""
import argparse
import time

import numpy as np

import flowjit as fj
import flowjit.compat.v1 as tf


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--n", type=int, default=100, help="number of data points")
    args = ap.parse_args(argv)

    rng = np.random.RandomState(0)
    train_X = rng.rand(args.n).astype(np.float32)
    train_Y = train_X * 0.1 + 0.3

    # --- the TF1 program ------------------------------------------------------------
    X = tf.placeholder(tf.float32, [None], name="X")
    Y = tf.placeholder(tf.float32, [None], name="Y")
    W = tf.Variable(tf.random_uniform([1], -1.0, 1.0, seed=1), name="weight")
    b = tf.Variable(tf.zeros([1]), name="bias")
    pred = tf.add(tf.multiply(X, W), b)
    cost = tf.reduce_mean(tf.square(pred - Y))
    train = tf.train.GradientDescentOptimizer(args.lr).minimize(cost)
    init = tf.global_variables_initializer()

    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    t0 = time.perf_counter()
    with tf.Session() as sess:
        sess.run(init)
        epochs = tqdm(range(args.epochs), desc="epochs", mininterval=0.5) if tqdm else range(args.epochs)
        for epoch in epochs:
            order = rng.permutation(args.n)
            for s in range(0, args.n, args.batch_size):
                idx = order[s:s + args.batch_size]
                sess.run(train, feed_dict={X: train_X[idx], Y: train_Y[idx]})
            if tqdm:
                epochs.set_postfix(cost=f"{sess.run(cost, feed_dict={X: train_X, Y: train_Y}):.2e}")
        w_val, b_val = sess.run([W, b])
        final_cost = sess.run(cost, feed_dict={X: train_X, Y: train_Y})
    elapsed = time.perf_counter() - t0
    s = fj.stats()
    print(f"final: W={w_val[0]:.4f} (true 0.1)  b={b_val[0]:.4f} (true 0.3)  cost={final_cost:.2e}  "
          f"[{args.epochs} epochs in {elapsed:.2f}s, traces={s['traces']}, compiles={s['compiles']}, "
          f"compile {s['compile_seconds']:.2f}s]")
    return float(w_val[0]), float(b_val[0])


if __name__ == "__main__":
    main()
