"""Softmax regression (a single dense layer, softmax cross-entropy, plain gradient
descent): TensorFlow's first MNIST tutorial, here on the bundled 8x8 digits
(64 -> 10) or on real MNIST (784 -> 10) with --mnist.

    python examples/softmax_regression.py [--epochs 20] [--batch-size 100] [--lr 0.5]
"""
import common
import flowjit as fj


def main(argv=None):
    args = common.parser(__doc__, epochs=20, batch_size=100, lr=0.5).parse_args(argv)
    data = common.load_data(args)
    with common.session(args):
        n_in = data.train.images.shape[1]
        W = fj.Variable(fj.zeros((n_in, 10)), name="W")
        b = fj.Variable(fj.zeros((10,)), name="b")
        opt = fj.optimizers.SGD(args.lr)

        @fj.jit
        def logits(x):
            return x @ W + b

        @fj.jit
        def step(x, y):
            with fj.GradientTape() as tape:
                loss = fj.reduce_mean(fj.nn.softmax_cross_entropy_with_logits(y, logits(x)))
            opt.apply_gradients(zip(tape.gradient(loss, [W, b]), [W, b]))
            return loss

        n = common.num_steps(args, data.train.num_examples)
        loss, secs = common.train(args, step, lambda: data.train.next_batch(args.batch_size), n)
        acc = common.accuracy(logits(data.test.images), data.test.labels)
        return common.report("softmax_regression", {"test_accuracy": acc, "final_loss": loss}, secs, n)


if __name__ == "__main__":
    main()
