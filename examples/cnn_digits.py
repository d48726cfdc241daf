"""Convolutional networks trained with @fj.jit + Adam: the "small CNN" of the classic
TensorFlow talk, and a "deep MNIST"-style conv/max-pool network.

    python examples/cnn_digits.py                      # the 8x8 digits scikit-learn ships
    python examples/cnn_digits.py --mnist DIR          # MNIST IDX files (gz or raw) in DIR
    python examples/cnn_digits.py --model deep         # conv/pool/conv/pool/dense
    python examples/cnn_digits.py --steps 20           # quick run (a smoke test)

small (28x28 input, SAME padding):
    conv 5x5 stride 1 x16 relu -> 28x28x16
    conv 5x5 stride 2 x8  relu -> 14x14x8
    conv 4x4 stride 2 x12 relu -> 7x7x12 = 588 features
    dense 200 relu, dense 10 softmax
On the 8x8 digits two stride-2 layers would leave 2x2x12 = 48 features, so the second
conv runs at stride 1 there (8x8x16 -> 8x8x8 -> 4x4x12 = 192 features); the script says
so when it starts.

deep (TF's "Deep MNIST for experts" layout): conv 5x5 x32 relu, max-pool 2x2, conv 5x5
x64 relu, max-pool 2x2, dense 1024 relu, dropout 0.5 while training, dense 10.

The whole training step (forward, backward, Adam update) is one jitted function:
traced once, compiled into a forward and a backward function.
"""
import contextlib

import numpy as np

import common
import flowjit as fj


def _var(shape, name, seed):
    return fj.Variable(fj.random.truncated_normal(shape, stddev=0.1, seed=seed), name=name)


def _bias(n, name):
    return fj.Variable(fj.ones((n,)) * 0.1, name=name)


def small_cnn(side, seed=0):
    """(params, model(params, x, training) -> logits, description) for side x side input."""
    s2 = 2 if side >= 16 else 1              # 8x8 input: conv2 at stride 1 (see above)
    convs = [(5, 1, 16, 1), (5, 16, 8, s2), (4, 8, 12, 2)]     # (k, c_in, c_out, stride)
    out = side
    for _, _, _, s in convs:
        out = -(-out // s)
    feat = out * out * 12
    params = []
    for i, (k, ci, co, s) in enumerate(convs):
        params += [_var((k, k, ci, co), f"conv{i + 1}_w", seed + i), _bias(co, f"conv{i + 1}_b")]
    params += [_var((feat, 200), "dense1_w", seed + 10), _bias(200, "dense1_b"),
               _var((200, 10), "dense2_w", seed + 11), _bias(10, "dense2_b")]

    def model(p, x, training=False):
        h = fj.reshape(x, [-1, side, side, 1])
        for i, (_, _, _, s) in enumerate(convs):
            h = fj.nn.relu(fj.nn.conv2d(h, p[2 * i], s, "SAME") + p[2 * i + 1])
        h = fj.reshape(h, [-1, feat])
        h = fj.nn.relu(h @ p[6] + p[7])
        return h @ p[8] + p[9]

    how = (f"small CNN on {side}x{side}: conv 5x5/1 x16, conv 5x5/{s2} x8, conv 4x4/2 x12 "
           f"-> {out}x{out}x12 = {feat} features, dense 200, dense 10")
    if s2 == 1:
        how += " (conv2 at stride 1 instead of 2: 8x8 input)"
    return params, model, how


def deep_cnn(side, seed=0):
    half = -(-side // 2)                     # SAME 2x2 pooling: ceil(side / 2), twice
    out = -(-half // 2)
    feat = out * out * 64
    params = [_var((5, 5, 1, 32), "conv1_w", seed), _bias(32, "conv1_b"),
              _var((5, 5, 32, 64), "conv2_w", seed + 1), _bias(64, "conv2_b"),
              _var((feat, 1024), "dense1_w", seed + 2), _bias(1024, "dense1_b"),
              _var((1024, 10), "dense2_w", seed + 3), _bias(10, "dense2_b")]

    def model(p, x, training=False):
        h = fj.reshape(x, [-1, side, side, 1])
        h = fj.nn.max_pool2d(fj.nn.relu(fj.nn.conv2d(h, p[0], 1, "SAME") + p[1]), 2, 2, "SAME")
        h = fj.nn.max_pool2d(fj.nn.relu(fj.nn.conv2d(h, p[2], 1, "SAME") + p[3]), 2, 2, "SAME")
        h = fj.nn.relu(fj.reshape(h, [-1, feat]) @ p[4] + p[5])
        if training:
            h = fj.nn.dropout(h, 0.5)
        return h @ p[6] + p[7]

    how = (f"deep CNN on {side}x{side}: conv 5x5 x32, max-pool 2x2, conv 5x5 x64, max-pool 2x2 "
           f"-> {out}x{out}x64 = {feat} features, dense 1024 (dropout 0.5), dense 10")
    return params, model, how


def count_params(params):
    return int(sum(np.prod(p.shape) for p in params))


def main(argv=None):
    ap = common.parser(__doc__, epochs=20, batch_size=64, lr=0.003)
    ap.set_defaults(lr=None, epochs=None)
    ap.add_argument("--model", choices=["small", "deep"], default="small")
    args = ap.parse_args(argv)
    args.epochs = args.epochs if args.epochs is not None else (2 if args.mnist else 20)
    args.lr = args.lr if args.lr is not None else (0.003 if args.model == "small" else 0.001)

    data = common.load_data(args, reshape=False)          # images [n, side, side, 1]
    side = data.train.images.shape[1]
    name = "MNIST" if args.mnist else "digits"
    with common.session(args):
        fj.random.set_seed(args.seed)
        build = small_cnn if args.model == "small" else deep_cnn
        params, model, how = build(side, args.seed)
        opt = fj.optimizers.Adam(args.lr)
        print(f"{how}; {count_params(params):,} parameters; {name}: "
              f"{data.train.num_examples} train / {data.test.num_examples} test images; "
              f"device {args.device}")

        @fj.jit
        def train_step(x, y):
            with fj.GradientTape() as tape:
                logits = model(params, x, training=True)
                loss = fj.reduce_mean(fj.nn.softmax_cross_entropy_with_logits(y, logits))
            opt.apply_gradients(zip(tape.gradient(loss, params), params))
            return loss

        @fj.jit
        def correct(x, y):
            hit = fj.equal(fj.argmax(model(params, x), 1), fj.argmax(y, 1))
            return fj.reduce_sum(fj.cast(hit, fj.float32))

        n = common.num_steps(args, data.train.num_examples)
        loss, secs = common.train(args, train_step, lambda: data.train.next_batch(args.batch_size), n)
        hits = sum(float(correct(x, y)) for x, y in data.test.batches(1000, shuffle=False))
        acc = hits / data.test.num_examples
        common.report(f"cnn_digits ({args.model})", {"test_accuracy": acc, "final_loss": loss}, secs, n)
    return acc


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
