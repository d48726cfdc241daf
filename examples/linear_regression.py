"""Linear regression y = 0.1 x + 0.3 (plus noise), the first program of the classic
TensorFlow talks, solved two ways and compared: gradient descent, where the whole
training step (forward, the hand-derived gradient of the mean squared error, the
update) is one @fj.jit function traced once and compiled by Numba into fused loops;
and the closed form (least squares: w = cov(x, y) / var(x), b = mean(y) - w mean(x)),
also computed with flowjit ops.

    python examples/linear_regression.py [--epochs 201] [--lr 0.5] [--n 100]

(--epochs is the number of descent steps here; --mnist and --batch-size are unused.)
"""
import numpy as np

import common
import flowjit as fj


@fj.jit
def train_step(w, b, x, y, lr):
    err = w * x + b - y                      # forward: residuals
    loss = fj.reduce_mean(fj.square(err))
    grad_w = 2.0 * fj.reduce_mean(err * x)   # d loss / d w
    grad_b = 2.0 * fj.reduce_mean(err)       # d loss / d b
    return w - lr * grad_w, b - lr * grad_b, loss


@fj.jit
def closed_form(x, y):
    mx, my = fj.reduce_mean(x), fj.reduce_mean(y)
    w = fj.reduce_mean((x - mx) * (y - my)) / fj.reduce_mean(fj.square(x - mx))
    return w, my - w * mx


def main(argv=None):
    ap = common.parser(__doc__, epochs=201, lr=0.5)
    ap.add_argument("--n", type=int, default=100, help="number of data points")
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--inspect", action="store_true", help="print the traced graph and generated code")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    x_data = rng.random(args.n).astype(np.float32)
    y_data = (x_data * 0.1 + 0.3 + rng.normal(0, args.noise, args.n)).astype(np.float32)

    with common.session(args):
        state = {"w": fj.random.uniform((), -1.0, 1.0, seed=1), "b": fj.zeros(())}

        def step():
            state["w"], state["b"], loss = train_step(state["w"], state["b"], x_data, y_data, args.lr)
            return loss
        n = args.epochs if args.steps is None else min(args.epochs, args.steps)
        loss, secs = common.train(args, step, lambda: (), n, desc="descent", graph_args=False)
        if args.logdir:
            fj.summary.graph(train_step, state["w"], state["b"], x_data, y_data, args.lr)
        w_gd, b_gd = float(state["w"]), float(state["b"])
        w_cf, b_cf = (float(v) for v in closed_form(x_data, y_data))
        if args.inspect:
            print(train_step.inspect(state["w"], state["b"], x_data, y_data, args.lr))
        mse = lambda w, b: float(np.mean((w * x_data + b - y_data) ** 2))   # noqa: E731
        return common.report("linear_regression", {
            "W_gd": w_gd, "b_gd": b_gd, "W_closed": w_cf, "b_closed": b_cf,
            "max_gap": max(abs(w_gd - w_cf), abs(b_gd - b_cf)),
            "mse_gd": mse(w_gd, b_gd), "mse_closed": mse(w_cf, b_cf)}, secs, n)


if __name__ == "__main__":
    main()
