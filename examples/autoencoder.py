"""An autoencoder trained with RMSprop: 64-32-16 sigmoid encoder and 16-32-64 decoder on
the bundled 8x8 digits (784-256-128 and back with --mnist), mean squared reconstruction
error. With matplotlib installed it also writes a PNG of test inputs (top row) and their
reconstructions (bottom row).

    python examples/autoencoder.py [--epochs 60] [--lr 0.01] [--png autoencoder.png]
"""
import numpy as np

import common
import flowjit as fj


def save_png(path, inputs, outputs, side):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "(no PNG: pip install matplotlib)"
    k = len(inputs)
    fig, axes = plt.subplots(2, k, figsize=(k * 0.9, 2.0))
    for i in range(k):
        for row, img in ((0, inputs[i]), (1, outputs[i])):
            axes[row, i].imshow(img.reshape(side, side), cmap="gray", vmin=0, vmax=1)
            axes[row, i].axis("off")
    fig.suptitle("inputs (top) vs reconstructions (bottom)", fontsize=8)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main(argv=None):
    ap = common.parser(__doc__, epochs=60, batch_size=64, lr=0.01)
    ap.add_argument("--png", default="autoencoder.png", help="where to draw inputs vs reconstructions "
                    "('' for none)")
    args = ap.parse_args(argv)
    data = common.load_data(args)
    n_in = data.train.images.shape[1]
    sizes = [n_in, 256, 128] if n_in > 64 else [n_in, 32, 16]
    with common.session(args):
        fj.random.set_seed(args.seed)
        enc = [(fj.Variable(fj.random.normal((a, b), stddev=(1.0 / a) ** 0.5, seed=i), name=f"enc_w{i}"),
                fj.Variable(fj.zeros((b,)), name=f"enc_b{i}")) for i, (a, b) in enumerate(zip(sizes, sizes[1:]))]
        rev = sizes[::-1]
        dec = [(fj.Variable(fj.random.normal((a, b), stddev=(1.0 / a) ** 0.5, seed=10 + i), name=f"dec_w{i}"),
                fj.Variable(fj.zeros((b,)), name=f"dec_b{i}")) for i, (a, b) in enumerate(zip(rev, rev[1:]))]
        params = [v for pair in enc + dec for v in pair]
        opt = fj.optimizers.RMSprop(args.lr)

        @fj.jit
        def reconstruct(x):
            h = x
            for w, b in enc + dec:
                h = fj.sigmoid(h @ w + b)
            return h

        @fj.jit
        def step(x):
            with fj.GradientTape() as tape:
                loss = fj.reduce_mean(fj.square(reconstruct(x) - x))
            opt.apply_gradients(zip(tape.gradient(loss, params), params))
            return loss

        n = common.num_steps(args, data.train.num_examples)
        loss, secs = common.train(args, step, lambda: data.train.next_batch(args.batch_size)[:1], n)
        x = data.test.images
        out = np.asarray(reconstruct(x))
        mse = float(np.mean((out - x) ** 2))
        baseline = float(np.mean((data.train.images.mean(0) - x) ** 2))   # predict the mean image
        png = save_png(args.png, x[:10], out[:10], int(round(n_in ** 0.5))) if args.png else "(none)"
        return common.report("autoencoder", {"test_mse": mse, "mean_image_mse": baseline, "final_loss": loss,
                                             "png": png}, secs, n)


if __name__ == "__main__":
    main()
