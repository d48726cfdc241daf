"""A character-level LSTM language model (the char-RNN of the RNN talks): it reads a
text one character at a time and learns to predict the next one, then writes text of
its own. The text is the dataset descriptions scikit-learn ships (about 43 KB of
English; any UTF-8 file with --text).

The training step (embedding, one LSTM layer over the sequence, softmax over the
characters, Adam) is one `@fj.jit` function; the LSTM is one compiled loop over time
(`fj.nn.lstm` on `fj.scan`). Sampling is a jitted loop too: the random numbers are
drawn before it and passed in (Gumbel-max sampling).

    python examples/char_rnn.py [--steps 1500] [--hidden 128] [--seq-len 32] [--logdir DIR]
"""
import glob
import os

import numpy as np

import common
import flowjit as fj


def load_text(path=None):
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read()
    import sklearn
    descr = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "descr")
    parts = []
    for name in sorted(glob.glob(os.path.join(descr, "*.rst"))):
        with open(name, encoding="utf-8") as f:
            parts.append(f.read())
    return "\n".join(parts)


def unigram_loss(ids, vocab):
    """Cross-entropy (nats a character) of always predicting the characters' frequencies:
    the loss a model with no memory of the past reaches."""
    p = np.bincount(ids, minlength=vocab) / len(ids)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def build(vocab, embed, hidden, seed):
    rng = np.random.default_rng(seed)

    def glorot(n_in, n_out):
        lim = np.sqrt(6.0 / (n_in + n_out))
        return rng.uniform(-lim, lim, (n_in, n_out)).astype(np.float32)
    return {"embedding": fj.Variable(rng.standard_normal((vocab, embed)).astype(np.float32) * 0.1, name="embedding"),
            "kernel": fj.Variable(glorot(embed + hidden, 4 * hidden), name="lstm/kernel"),
            "bias": fj.Variable(np.zeros(4 * hidden, np.float32), name="lstm/bias"),
            "w_out": fj.Variable(glorot(hidden, vocab), name="w_out"),
            "b_out": fj.Variable(np.zeros(vocab, np.float32), name="b_out")}


def main(argv=None):
    ap = common.parser(__doc__, epochs=1, batch_size=32, lr=0.005)
    ap.add_argument("--text", help="a UTF-8 text file to learn (default: scikit-learn's dataset descriptions)")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--embed", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--sample-len", type=int, default=200)
    ap.add_argument("--sample-every", type=int, default=500)
    ap.add_argument("--temperature", type=float, default=0.8)
    args = ap.parse_args(argv)
    n_steps = args.steps if args.steps is not None else 1500

    text = load_text(args.text)
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = np.array([index[c] for c in text], np.int32)
    vocab = len(chars)
    baseline = unigram_loss(ids, vocab)
    rng = np.random.default_rng(args.seed)

    def next_batch():
        starts = rng.integers(0, len(ids) - args.seq_len - 1, args.batch_size)
        window = ids[starts[:, None] + np.arange(args.seq_len + 1)]
        return window[:, :-1], window[:, 1:]

    with common.session(args):
        p = build(vocab, args.embed, args.hidden, args.seed)
        params = list(p.values())
        opt = fj.optimizers.Adam(args.lr)

        @fj.jit
        def train_step(x, y):
            with fj.GradientTape() as tape:
                inputs = fj.gather(p["embedding"], x)                    # (batch, time, embed)
                out, _ = fj.nn.lstm(inputs, p["kernel"], p["bias"])      # (batch, time, hidden)
                logits = fj.matmul(fj.reshape(out, (-1, args.hidden)), p["w_out"]) + p["b_out"]
                loss = fj.reduce_mean(fj.nn.sparse_softmax_cross_entropy_with_logits(
                    fj.reshape(y, (-1,)), logits))
            grads = tape.gradient(loss, params)
            grads, _ = fj.clip_by_global_norm(grads, 5.0)
            opt.apply_gradients(zip(grads, params))
            return loss

        @fj.jit
        def sample(first, noise):
            """One character after another: the LSTM reads the last one, and the next is
            argmax(logits / temperature + Gumbel noise), a draw from the softmax."""
            zero = fj.zeros((1, args.hidden))

            def step(carry, g):
                c, h, ch = carry
                x = fj.gather(p["embedding"], ch)
                h, (c, _) = fj.nn.lstm_cell(x, (c, h), p["kernel"], p["bias"])
                logits = (fj.matmul(h, p["w_out"]) + p["b_out"]) / args.temperature
                nxt = fj.cast(fj.argmax(logits + g, axis=1), "int32")
                return (c, h, nxt), nxt[0]
            _, out = fj.scan(step, (zero, zero, fj.reshape(first, (1,))), noise)
            return out

        def write_sample(step):
            u = rng.uniform(1e-9, 1.0, (args.sample_len, 1, vocab)).astype(np.float32)
            gumbel = -np.log(-np.log(u))
            got = sample(np.int32(index.get("\n", 0)), gumbel).numpy()
            txt = "".join(chars[i] for i in got)
            print(f"\n--- sample after {step} steps ---\n{txt}\n---")
            return txt

        def step_fn(x, y, _count=[0]):
            loss = train_step(x, y)
            _count[0] += 1
            if args.sample_every and _count[0] % args.sample_every == 0 and _count[0] < n_steps:
                write_sample(_count[0])
            return loss

        print(f"text: {len(text)} characters, {vocab} distinct; unigram baseline {baseline:.3f} nats/char")
        loss, secs = common.train(args, step_fn, next_batch, n_steps, graph_args=False)
        # the final loss over a few fresh batches, not one noisy step
        final = float(np.mean([float(train_step(*next_batch())) for _ in range(5)]))
        text_out = write_sample(n_steps)
        print(f"loss {final:.3f} nats/char vs unigram baseline {baseline:.3f}")
        metrics = common.report("char_rnn", {"final_loss": final, "unigram_loss": baseline}, secs, n_steps)
        return dict(metrics, sample=text_out)


if __name__ == "__main__":
    main()
