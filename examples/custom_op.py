"""Two ops written by the user with `fj.custom_op`, trained in an MLP on the 8x8 digits:

- `swish` (x * sigmoid(beta x)): an elementwise op given as a scalar Numba function; it
  fuses into the loops around it (`inspect` shows one loop with the bias add);
- `segment_mean`: an opaque op whose kernel writes its output array; the model
  averages the hidden units in groups of 4 with it, and its gradient rule (written
  with flowjit ops) lets the tape differentiate through it.

    python examples/custom_op.py [--epochs 20] [--batch-size 64] [--lr 0.005]
"""
import math

import numpy as np

import common
import flowjit as fj


# --- swish: elementwise, fused ------------------------------------------------------
def swish_kernel(x, beta):
    return x / (1.0 + math.exp(-beta * x))


def swish_grad(inputs, out, g, beta):
    s = fj.sigmoid(inputs[0] * beta)
    return [g * (s + out * beta * (1.0 - s))]


swish = fj.custom_op("swish", shape_fn=lambda shapes, dtypes, beta: (shapes[0], dtypes[0]),
                     cpu_kernel=swish_kernel, grad=swish_grad, elementwise=True)


# --- segment_mean over the last axis: opaque, its own kernel -------------------------
def segment_mean_kernel(x, out, size):
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            acc = 0.0
            for k in range(size):
                acc += x[i, j * size + k]
            out[i, j] = acc / size


def segment_mean_shape(shapes, dtypes, size):
    n, m = shapes[0]
    if m % size:
        raise ValueError(f"the last dim ({m}) is not a multiple of size={size}")
    return (n, m // size), dtypes[0]


def segment_mean_grad(inputs, out, g, size):
    # every input of a segment gets 1/size of the segment's gradient
    spread = fj.tile(fj.expand_dims(g, 2), [1, 1, size]) / float(size)
    return [fj.reshape(spread, [-1, inputs[0].shape[1]])]


segment_mean = fj.custom_op("segment_mean", shape_fn=segment_mean_shape,
                            cpu_kernel=segment_mean_kernel, grad=segment_mean_grad)


def build(hidden=128, seed=0, n_in=64, group=4):
    fj.random.set_seed(seed)
    w1 = fj.Variable(fj.random.truncated_normal((n_in, hidden), stddev=0.1, seed=1), name="w1")
    b1 = fj.Variable(fj.zeros((hidden,)), name="b1")
    w2 = fj.Variable(fj.random.truncated_normal((hidden // group, 10), stddev=0.3, seed=2), name="w2")
    b2 = fj.Variable(fj.zeros((10,)), name="b2")
    return [w1, b1, w2, b2]


def model(params, x, group=4):
    w1, b1, w2, b2 = params
    h = swish(x @ w1 + b1, beta=1.0)
    return segment_mean(h, size=group) @ w2 + b2


def main(argv=None):
    ap = common.parser(__doc__, epochs=20, batch_size=64, lr=0.005)
    args = ap.parse_args(argv)
    data = common.load_data(args)
    with common.session(args):
        params = build(128, args.seed, data.train.images.shape[1])
        opt = fj.optimizers.Adam(args.lr)

        @fj.jit
        def train_step(x, y):
            with fj.GradientTape() as tape:
                loss = fj.reduce_mean(fj.nn.softmax_cross_entropy_with_logits(y, model(params, x)))
            opt.apply_gradients(zip(tape.gradient(loss, params), params))
            return loss

        @fj.jit
        def logits(x):
            return model(params, x)

        n = common.num_steps(args, data.train.num_examples)
        loss, secs = common.train(args, train_step, lambda: data.train.next_batch(args.batch_size), n)
        acc = common.accuracy(logits(data.test.images), data.test.labels)
        x = data.test.images[:8]
        fused = fj.jit(lambda x: swish(x @ params[0] + params[1], beta=1.0)).inspect(x)
        common.report("custom_op", {"test_accuracy": acc, "final_loss": loss,
                                    "swish_bias_loops": fused.num_fused_loops}, secs, n)
        return {"test_accuracy": acc, "final_loss": loss, "swish_bias_loops": fused.num_fused_loops}


if __name__ == "__main__":
    main()
