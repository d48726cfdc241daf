"""Linear regression y = 0.1 x + 0.3 learned by gradient descent, the first program of
the classic TensorFlow talks; the whole training step (forward, the hand-derived
gradient of the mean squared error, the update) is one @fj.jit function, traced once
and compiled by Numba into fused loops.

    python examples/linear_regression.py [--steps 201] [--lr 0.5]
"""
import argparse
import time

import numpy as np

import flowjit as fj


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=201)
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--n", type=int, default=100, help="number of data points")
    ap.add_argument("--inspect", action="store_true", help="print the traced graph and generated code")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    x_data = rng.random(args.n).astype(np.float32)
    y_data = x_data * 0.1 + 0.3

    @fj.jit
    def train_step(w, b, x, y, lr):
        err = w * x + b - y                      # forward: residuals
        loss = fj.reduce_mean(fj.square(err))
        grad_w = 2.0 * fj.reduce_mean(err * x)   # d loss / d w
        grad_b = 2.0 * fj.reduce_mean(err)       # d loss / d b
        return w - lr * grad_w, b - lr * grad_b, loss

    w = fj.random.uniform((), -1.0, 1.0, seed=1)
    b = fj.zeros(())
    t0 = time.perf_counter()
    for step in range(args.steps):
        w, b, loss = train_step(w, b, x_data, y_data, args.lr)
        if step % 20 == 0:
            print(f"step {step:4d}  W={float(w):.4f}  b={float(b):.4f}  loss={float(loss):.2e}")
    elapsed = time.perf_counter() - t0
    if args.inspect:
        print(train_step.inspect(w, b, x_data, y_data, args.lr))
    s = fj.stats()
    print(f"final: W={float(w):.4f} (true 0.1)  b={float(b):.4f} (true 0.3)  loss={float(loss):.2e}  "
          f"[{args.steps} steps in {elapsed:.2f}s, traces={s['traces']}, compiles={s['compiles']}, "
          f"compile {s['compile_seconds']:.2f}s]")
    return float(w), float(b)


if __name__ == "__main__":
    main()
