"""The sigmoid MLP of the classic talks, 784-256-128-10 on MNIST, here 64-256-128-10 on
the bundled 8x8 digits (784-256-128-10 with --mnist): two sigmoid hidden layers,
softmax cross-entropy, Adam.

    python examples/sigmoid_mlp.py [--epochs 30] [--batch-size 64] [--lr 0.003]
"""
import common
import flowjit as fj


def main(argv=None):
    args = common.parser(__doc__, epochs=30, batch_size=64, lr=0.003).parse_args(argv)
    data = common.load_data(args)
    with common.session(args):
        sizes = [data.train.images.shape[1], 256, 128, 10]
        fj.random.set_seed(args.seed)
        params = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            params += [fj.Variable(fj.random.normal((a, b), stddev=(1.0 / a) ** 0.5, seed=i), name=f"w{i + 1}"),
                       fj.Variable(fj.zeros((b,)), name=f"b{i + 1}")]
        opt = fj.optimizers.Adam(args.lr)

        @fj.jit
        def logits(x):
            w1, b1, w2, b2, w3, b3 = params
            h1 = fj.sigmoid(x @ w1 + b1)
            h2 = fj.sigmoid(h1 @ w2 + b2)
            return h2 @ w3 + b3

        @fj.jit
        def step(x, y):
            with fj.GradientTape() as tape:
                loss = fj.reduce_mean(fj.nn.softmax_cross_entropy_with_logits(y, logits(x)))
            opt.apply_gradients(zip(tape.gradient(loss, params), params))
            return loss

        n = common.num_steps(args, data.train.num_examples)
        loss, secs = common.train(args, step, lambda: data.train.next_batch(args.batch_size), n)
        acc = common.accuracy(logits(data.test.images), data.test.labels)
        return common.report("sigmoid_mlp " + "-".join(map(str, sizes)),
                             {"test_accuracy": acc, "final_loss": loss}, secs, n)


if __name__ == "__main__":
    main()
