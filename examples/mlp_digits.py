"""An MLP 64-128-10 (ReLU, softmax cross-entropy, Adam) trained with @fj.jit on the
8x8 handwritten digits that scikit-learn ships (784-128-10 on real MNIST with --mnist).
The training step (forward, backward, Adam update of every variable) is compiled once:
a forward function and a backward function with the optimizer updates fused into its
loops.

    python examples/mlp_digits.py [--epochs 30] [--batch-size 64] [--lr 0.005]
"""
import common
import flowjit as fj


def build(hidden=128, seed=0, n_in=64):
    fj.random.set_seed(seed)
    w1 = fj.Variable(fj.random.truncated_normal((n_in, hidden), stddev=0.1, seed=1), name="w1")
    b1 = fj.Variable(fj.zeros((hidden,)), name="b1")
    w2 = fj.Variable(fj.random.truncated_normal((hidden, 10), stddev=0.1, seed=2), name="w2")
    b2 = fj.Variable(fj.zeros((10,)), name="b2")
    return [w1, b1, w2, b2]


def model(params, x):
    w1, b1, w2, b2 = params
    h = fj.nn.relu(x @ w1 + b1)
    return h @ w2 + b2


def compiled_steps(params, opt):
    """The jitted training step (loss, gradients, `opt`'s update) and logits function."""
    @fj.jit
    def train_step(x, y):
        with fj.GradientTape() as tape:
            loss = fj.reduce_mean(fj.nn.softmax_cross_entropy_with_logits(y, model(params, x)))
        opt.apply_gradients(zip(tape.gradient(loss, params), params))
        return loss

    @fj.jit
    def logits(x):
        return model(params, x)
    return train_step, logits


def main(argv=None):
    ap = common.parser(__doc__, epochs=30, batch_size=64, lr=0.005)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="2 epochs (CI smoke run)")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs = 2
    data = common.load_data(args)
    with common.session(args):
        params = build(args.hidden, args.seed, data.train.images.shape[1])
        train_step, logits = compiled_steps(params, fj.optimizers.Adam(args.lr))
        n = common.num_steps(args, data.train.num_examples)
        loss, secs = common.train(args, train_step, lambda: data.train.next_batch(args.batch_size), n)
        if args.logdir:
            for p in params:
                fj.summary.histogram(p.name.split(":")[0], p, step=n)
        acc = common.accuracy(logits(data.test.images), data.test.labels)
        common.report("mlp_digits", {"test_accuracy": acc, "final_loss": loss}, secs, n)
        return acc


if __name__ == "__main__":
    main()
