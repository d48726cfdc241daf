"""Minimise f(x) = (x - a)^2 by gradient descent: a Variable, GradientTape and the SGD
optimizer, the whole step compiled by @fj.jit. x converges to a.

    python examples/minimize_quadratic.py [--a 3.0] [--epochs 100] [--lr 0.1]

(--epochs is the number of descent steps here; --mnist and --batch-size are unused.)
"""
import common
import flowjit as fj


def main(argv=None):
    ap = common.parser(__doc__, epochs=100, lr=0.1)
    ap.add_argument("--a", type=float, default=3.0)
    ap.add_argument("--x0", type=float, default=0.0)
    args = ap.parse_args(argv)
    with common.session(args):
        x = fj.Variable(args.x0, name="x")
        opt = fj.optimizers.SGD(args.lr)

        @fj.jit
        def step(a):
            with fj.GradientTape() as tape:
                loss = fj.square(x - a)
            opt.apply_gradients([(tape.gradient(loss, x), x)])
            return loss

        n = args.epochs if args.steps is None else min(args.epochs, args.steps)
        loss, secs = common.train(args, step, lambda: (args.a,), n, desc="descent")
        xv = float(x.numpy())
        return common.report("minimize_quadratic", {"x": xv, "target": args.a, "error": abs(xv - args.a),
                                                    "loss": float((xv - args.a) ** 2)}, secs, n)


if __name__ == "__main__":
    main()
