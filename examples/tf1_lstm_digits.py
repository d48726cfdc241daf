"""The classic TensorFlow 1 recurrent-network tutorial: an LSTM reads each digit image one
row at a time (8 steps of 8 pixels for the bundled 8x8 digits, 28 steps of 28 with
--mnist) and a dense layer on its last output classifies it. Written as the TF1
program (placeholders, `tf.contrib.rnn.BasicLSTMCell`, `tf.nn.dynamic_rnn` or, with
--static, `tf.unstack` + `tf.contrib.rnn.static_rnn`, Adam, `Session.run`) and run by
flowjit with only the import changed. dynamic_rnn is one compiled loop over the rows.

    python examples/tf1_lstm_digits.py [--epochs 10] [--hidden 64] [--static] [--mnist DIR]
"""
import time

import common
import flowjit.compat.v1 as tf


def main(argv=None):
    ap = common.parser(__doc__, epochs=10, batch_size=64, lr=0.01)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--static", action="store_true", help="unroll with static_rnn, as the oldest tutorials do")
    args = ap.parse_args(argv)
    data = common.load_data(args)
    pixels = data.train.images.shape[1]
    side = int(round(pixels ** 0.5))        # rows = time steps, pixels per row = inputs

    # --- the TF1 program ------------------------------------------------------------
    tf.reset_default_graph()
    tf.set_random_seed(args.seed)
    with tf.device(args.device):
        x = tf.placeholder(tf.float32, [None, side, side])
        y = tf.placeholder(tf.float32, [None, 10])
        weights = tf.Variable(tf.random_normal([args.hidden, 10]))
        biases = tf.Variable(tf.random_normal([10]))
        cell = tf.contrib.rnn.BasicLSTMCell(args.hidden, forget_bias=1.0)
        if args.static:
            outputs, states = tf.contrib.rnn.static_rnn(cell, tf.unstack(x, side, 1), dtype=tf.float32)
            last = outputs[-1]
        else:
            outputs, states = tf.nn.dynamic_rnn(cell, x, dtype=tf.float32)
            last = states.h
        logits = tf.matmul(last, weights) + biases
        loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(logits=logits, labels=y))
        train_op = tf.train.AdamOptimizer(learning_rate=args.lr).minimize(loss)
        correct = tf.equal(tf.argmax(logits, 1), tf.argmax(y, 1))
        accuracy = tf.reduce_mean(tf.cast(correct, tf.float32))

    steps = common.num_steps(args, data.train.num_examples)
    bar = common.progress(steps, "train", args)
    t0 = time.perf_counter()
    with tf.Session() as sess:
        writer = tf.summary.FileWriter(args.logdir, sess.graph) if args.logdir else None
        sess.run(tf.global_variables_initializer())
        for i in range(steps):
            bx, by = data.train.next_batch(args.batch_size)
            _, l = sess.run([train_op, loss], feed_dict={x: bx.reshape(-1, side, side), y: by})
            if bar is not None:
                bar.update(1)
                if i % 20 == 0:
                    bar.set_postfix(loss=f"{l:.4f}", refresh=False)
        elapsed = time.perf_counter() - t0
        acc = sess.run(accuracy, feed_dict={x: data.test.images.reshape(-1, side, side), y: data.test.labels})
        if writer is not None:
            writer.close()
    if bar is not None:
        bar.close()
    return common.report("tf1_lstm_digits", {"test_accuracy": float(acc), "final_loss": float(l)},
                         elapsed, steps)


if __name__ == "__main__":
    main()
