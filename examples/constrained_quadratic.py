"""Minimise (x - a)^2 subject to x = b, the constraint as a quadratic penalty
mu * (x - b)^2 whose weight mu grows every phase (the penalty method): each phase's
minimiser (a + mu*b) / (1 + mu) moves to b as mu grows. mu is an input of the jitted
step, so changing it does not recompile.

    python examples/constrained_quadratic.py [--a 3.0] [--b 1.0] [--epochs 200]

(--epochs is the number of descent steps per phase; --mnist and --batch-size are unused.)
"""
import common
import flowjit as fj


def main(argv=None):
    ap = common.parser(__doc__, epochs=200, lr=0.1)
    ap.add_argument("--a", type=float, default=3.0)
    ap.add_argument("--b", type=float, default=1.0)
    ap.add_argument("--phases", type=int, default=6, help="mu = 1, 10, 100, ... per phase")
    args = ap.parse_args(argv)
    with common.session(args):
        x = fj.Variable(0.0, name="x")
        opt = fj.optimizers.SGD(1.0)

        @fj.jit
        def step(a, b, mu, lr):
            with fj.GradientTape() as tape:
                objective = fj.square(x - a)
                loss = objective + mu * fj.square(x - b)
            # a step size scaled by the curvature 2(1 + mu) keeps descent stable as mu grows
            g = tape.gradient(loss, x)
            opt.apply_gradients([(g * lr, x)])
            return loss

        per_phase = args.epochs if args.steps is None else max(1, args.steps // args.phases)
        secs = 0.0
        for k in range(args.phases):
            mu = 10.0 ** k
            lr = args.lr / (1.0 + mu)
            _, s = common.train(args, step, lambda: (args.a, args.b, mu, lr), per_phase,
                                desc=f"mu={mu:g}", graph_args=False if k else None)
            secs += s
            fj.summary.scalar("x", x.numpy(), step=k)
        xv = float(x.numpy())
        exact = (args.a + mu * args.b) / (1.0 + mu)
        return common.report("constrained_quadratic", {
            "x": xv, "b": args.b, "constraint_violation": abs(xv - args.b),
            "penalty_optimum": exact, "error_vs_optimum": abs(xv - exact)}, secs, per_phase * args.phases)


if __name__ == "__main__":
    main()
