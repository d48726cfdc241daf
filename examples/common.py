"""What every example shares: the command line, the data, the training loop (tqdm
progress bar, TensorBoard scalars when --logdir is given) and the final metrics line.

Every example takes:
  --mnist DIR      train on real MNIST from DIR (the four IDX files, raw or .gz)
                   instead of the bundled 8x8 digits
  --epochs N       passes over the training set
  --batch-size N
  --lr X           learning rate
  --logdir DIR     write TensorBoard scalars (and the training graph) to DIR
  --device D       run under `with fj.device(D)` ("/cpu:0", "/gpu:0")
  --steps N        quick mode: stop after N training steps (what the tests run)
  --seed N
"""
import argparse
import contextlib
import time

import numpy as np

import flowjit as fj


def parser(doc, epochs=10, batch_size=64, lr=0.01):
    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist", metavar="DIR", help="real MNIST IDX files in DIR (default: bundled 8x8 digits)")
    ap.add_argument("--epochs", type=int, default=epochs)
    ap.add_argument("--batch-size", type=int, default=batch_size)
    ap.add_argument("--lr", type=float, default=lr)
    ap.add_argument("--logdir", help="write TensorBoard summaries here")
    ap.add_argument("--device", default="/cpu:0", help='e.g. "/cpu:0" or "/gpu:0"')
    ap.add_argument("--steps", type=int, default=None, help="quick mode: at most N training steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def load_data(args, reshape=True):
    """Bundled digits (64 pixels), or MNIST (784) with --mnist; `.train` / `.test`."""
    if args.mnist:
        return fj.data.load_mnist(args.mnist, reshape=reshape, validation_size=0, seed=args.seed)
    return fj.data.load_digits(reshape=reshape, seed=args.seed)


def num_steps(args, num_examples):
    steps = max(1, args.epochs * (num_examples // args.batch_size))
    return min(steps, args.steps) if args.steps is not None else steps


@contextlib.contextmanager
def session(args):
    """The device block and, with --logdir, a default TensorBoard writer."""
    with fj.device(args.device):
        if not args.logdir:
            yield None
            return
        writer = fj.summary.create_file_writer(args.logdir)
        try:
            with writer.as_default():
                yield writer
        finally:
            writer.close()


def progress(n, desc, args):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=n, desc=desc, mininterval=0.5, disable=args.no_progress, leave=False)


def train(args, step_fn, next_batch, n_steps, desc="train", log_every=10, graph_args=None):
    """Call `step_fn(*next_batch())` `n_steps` times; returns (last loss, seconds). With a
    writer, logs `loss` every `log_every` steps and draws `step_fn`'s graph once."""
    bar = progress(n_steps, desc, args)
    loss = float("nan")
    t0 = time.perf_counter()
    for step in range(n_steps):
        batch = next_batch()
        out = step_fn(*batch)
        if step == 0 and graph_args is not False:
            fj.summary.graph(step_fn, *(graph_args or batch))
        if step % log_every == 0 or step == n_steps - 1:
            loss = float(out)
            fj.summary.scalar("loss", loss, step=step)
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return float(out), time.perf_counter() - t0


def accuracy(logits, labels):
    """Fraction of rows whose argmax matches (labels one-hot or class ids), in NumPy."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    target = labels.argmax(1) if labels.ndim == 2 else labels
    return float(np.mean(logits.argmax(1) == target))


def report(name, metrics, seconds=None, steps=None, step=None):
    """Print the final metrics line (and log the metrics as scalars); returns `metrics`."""
    for k, v in metrics.items():
        if isinstance(v, (int, float)):
            fj.summary.scalar(f"final/{k}", v, step=step if step is not None else (steps or 0))
    s = fj.stats()
    parts = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
    extra = []
    if steps is not None:
        extra.append(f"{steps} steps")
    if seconds is not None:
        extra.append(f"{seconds:.2f}s")
    extra.append(f"compiles={s['compiles']}, compile {s['compile_seconds']:.1f}s")
    print(f"{name}: {parts}  [{', '.join(extra)}]")
    return metrics
