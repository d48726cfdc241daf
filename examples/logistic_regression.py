"""Logistic regression: tell two digits apart (default 3 vs 8) with one weight vector,
a sigmoid and the sigmoid cross-entropy, trained by gradient descent on the bundled
8x8 digits (or real MNIST with --mnist).

    python examples/logistic_regression.py [--classes 3 8] [--epochs 30] [--lr 0.5]
"""
import numpy as np

import common
import flowjit as fj


def binary(ds, pos, neg):
    """The examples of classes `pos` (label 1) and `neg` (label 0), labels [n, 1]."""
    y = ds.labels.argmax(1)
    keep = (y == pos) | (y == neg)
    return fj.data.Dataset(ds.images[keep], (y[keep] == pos).astype(np.float32)[:, None])


def main(argv=None):
    ap = common.parser(__doc__, epochs=30, batch_size=32, lr=0.5)
    ap.add_argument("--classes", type=int, nargs=2, default=[3, 8], metavar=("POS", "NEG"))
    args = ap.parse_args(argv)
    data = common.load_data(args)
    train, test = (binary(d, *args.classes) for d in (data.train, data.test))
    with common.session(args):
        w = fj.Variable(fj.zeros((train.images.shape[1], 1)), name="w")
        b = fj.Variable(fj.zeros((1,)), name="b")
        opt = fj.optimizers.SGD(args.lr)

        @fj.jit
        def logit(x):
            return x @ w + b

        @fj.jit
        def step(x, y):
            with fj.GradientTape() as tape:
                loss = fj.reduce_mean(fj.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logit(x)))
            opt.apply_gradients(zip(tape.gradient(loss, [w, b]), [w, b]))
            return loss

        n = common.num_steps(args, train.num_examples)
        loss, secs = common.train(args, step, lambda: train.next_batch(args.batch_size), n)
        pred = np.asarray(logit(test.images)) > 0
        acc = float(np.mean(pred == (test.labels > 0.5)))
        return common.report(f"logistic_regression ({args.classes[0]} vs {args.classes[1]})",
                             {"test_accuracy": acc, "final_loss": loss}, secs, n)


if __name__ == "__main__":
    main()
