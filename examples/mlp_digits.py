"""An MLP 64-128-10 (ReLU, softmax cross-entropy, Adam) trained with @fj.jit on the
8x8 handwritten digits that scikit-learn ships. The training step (forward, backward,
Adam update of every variable) is compiled once: a forward function and a backward
function with the optimizer updates fused into its loops.

    python examples/mlp_digits.py [--epochs 30] [--batch-size 64] [--lr 0.005]
"""
import argparse
import time

import numpy as np

import flowjit as fj


def build(hidden=128, seed=0):
    fj.random.set_seed(seed)
    w1 = fj.Variable(fj.random.truncated_normal((64, hidden), stddev=0.1, seed=1), name="w1")
    b1 = fj.Variable(fj.zeros((hidden,)), name="b1")
    w2 = fj.Variable(fj.random.truncated_normal((hidden, 10), stddev=0.1, seed=2), name="w2")
    b2 = fj.Variable(fj.zeros((10,)), name="b2")
    return [w1, b1, w2, b2]


def model(params, x):
    w1, b1, w2, b2 = params
    h = fj.nn.relu(x @ w1 + b1)
    return h @ w2 + b2


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--quick", action="store_true", help="2 epochs (CI smoke run)")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs = 2

    data = fj.data.load_digits()
    params = build()
    opt = fj.optimizers.Adam(args.lr)

    @fj.jit
    def train_step(x, y):
        with fj.GradientTape() as tape:
            loss = fj.reduce_mean(fj.nn.softmax_cross_entropy_with_logits(y, model(params, x)))
        opt.apply_gradients(zip(tape.gradient(loss, params), params))
        return loss

    @fj.jit
    def accuracy(x, y):
        hit = fj.equal(fj.argmax(model(params, x), 1), fj.argmax(y, 1))
        return fj.reduce_mean(fj.cast(hit, fj.float32))

    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    steps = args.epochs * (data.train.num_examples // args.batch_size)
    it = tqdm(range(steps), desc="train", mininterval=0.5) if tqdm else range(steps)
    t0 = time.perf_counter()
    for step in it:
        loss = train_step(*data.train.next_batch(args.batch_size))
        if tqdm and step % 20 == 0:
            it.set_postfix(loss=f"{float(loss):.4f}")
    elapsed = time.perf_counter() - t0
    acc = float(accuracy(data.test.images, data.test.labels))
    s = fj.stats()
    print(f"test accuracy {acc:.4f}  final loss {float(loss):.4f}  [{steps} steps, {elapsed:.2f}s, "
          f"traces={s['traces']}, compiles={s['compiles']}, compile {s['compile_seconds']:.2f}s]")
    return acc


if __name__ == "__main__":
    main()
