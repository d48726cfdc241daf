"""Word2vec: skip-gram word embeddings trained with noise-contrastive estimation, the
classic `tf.nn.nce_loss` example. Each word of a text predicts the words around it;
instead of a softmax over the whole vocabulary, each step scores the true context
word against `--num-sampled` negatives drawn from the log-uniform (Zipfian) sampler
(word ids are sorted by frequency, so frequent words are drawn more often). The text is
the dataset descriptions scikit-learn ships (any UTF-8 file with --text), so it runs
offline; it is small (about 5,000 words), so expect neighbours that reflect the
descriptions' phrasing (`fetch` next to `newsgroups` and `lfw`) more than English.

The training step (embedding lookup, nce_loss with its random negatives, SGD) is one
`@fj.jit` function: the negatives are drawn afresh on every call inside the compiled
code. At the end it prints each probe word's nearest words by cosine similarity.

    python examples/word2vec.py [--steps 3000] [--embed 64] [--num-sampled 32] [--window 2]
"""
import collections
import re

import numpy as np

import common
import flowjit as fj
from char_rnn import load_text

PROBES = ["data", "number", "train", "fetch", "mean", "class", "features", "images"]


def tokenize(text):
    return re.findall(r"[a-z]+", text.lower())


def build_vocab(words, min_count):
    """Words seen at least min_count times, most frequent first (id 0 the most frequent:
    what the log-uniform sampler assumes); the text as ids, rarer words dropped."""
    counts = collections.Counter(words)
    vocab = [w for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count]
    index = {w: i for i, w in enumerate(vocab)}
    ids = np.array([index[w] for w in words if w in index], np.int32)
    return vocab, ids


def skipgram_pairs(ids, window, keep, rng):
    """(center, context) pairs within `window` words of each other, after dropping each
    occurrence of a frequent word with probability 1 - keep[id] (Mikolov's subsampling:
    'the' and 'of' would otherwise be most of the pairs)."""
    ids = ids[rng.random(len(ids)) < keep[ids]]
    centers, contexts = [], []
    for off in range(1, window + 1):
        centers += [ids[:-off], ids[off:]]
        contexts += [ids[off:], ids[:-off]]
    centers, contexts = np.concatenate(centers), np.concatenate(contexts)
    order = rng.permutation(len(centers))
    return centers[order], contexts[order]


def cooccurring_pairs(ids, vocab, window, top, skip):
    """The `top` most frequent pairs of distinct words within `window` words of each
    other, among words outside `skip` (the most frequent ids: function words)."""
    counts = collections.Counter()
    for off in range(1, window + 1):
        for a, b in zip(ids[:-off], ids[off:]):
            if a != b and a >= skip and b >= skip:
                counts[(min(a, b), max(a, b))] += 1
    return [p for p, _ in counts.most_common(top)]


def main(argv=None):
    ap = common.parser(__doc__, epochs=1, batch_size=128, lr=1.0)
    ap.add_argument("--text", help="a UTF-8 text file (default: scikit-learn's dataset descriptions)")
    ap.add_argument("--embed", type=int, default=64)
    ap.add_argument("--num-sampled", type=int, default=32, help="negative classes per step")
    ap.add_argument("--window", type=int, default=2, help="context words on each side")
    ap.add_argument("--min-count", type=int, default=3)
    ap.add_argument("--subsample", type=float, default=1e-3)
    args = ap.parse_args(argv)
    n_steps = args.steps if args.steps is not None else 3000

    words = tokenize(load_text(args.text))
    vocab, ids = build_vocab(words, args.min_count)
    V = len(vocab)
    freq = np.bincount(ids, minlength=V) / len(ids)
    t = args.subsample
    keep = np.minimum(1.0, np.sqrt(t / freq) + t / freq)
    rng = np.random.default_rng(args.seed)
    print(f"text: {len(words)} words, vocabulary {V} (seen >= {args.min_count} times), "
          f"{len(ids)} words kept")

    state = {"pos": 0, "pairs": skipgram_pairs(ids, args.window, keep, rng)}

    def next_batch():
        centers, contexts = state["pairs"]
        if state["pos"] + args.batch_size > len(centers):       # a new epoch: new subsample
            state["pairs"], state["pos"] = skipgram_pairs(ids, args.window, keep, rng), 0
            centers, contexts = state["pairs"]
        s = slice(state["pos"], state["pos"] + args.batch_size)
        state["pos"] += args.batch_size
        return centers[s], contexts[s, None].astype(np.int64)

    with common.session(args):
        fj.random.set_seed(args.seed)
        d = args.embed
        embeddings = fj.Variable(fj.random.uniform((V, d), -1.0, 1.0, seed=1), name="embeddings")
        nce_w = fj.Variable(fj.random.truncated_normal((V, d), stddev=1.0 / np.sqrt(d), seed=2),
                            name="nce_weights")
        nce_b = fj.Variable(np.zeros(V, np.float32), name="nce_biases")
        params = [embeddings, nce_w, nce_b]
        opt = fj.optimizers.SGD(args.lr)

        @fj.jit
        def train_step(centers, contexts):
            with fj.GradientTape() as tape:
                embed = fj.nn.embedding_lookup(embeddings, centers)
                loss = fj.reduce_mean(fj.nn.nce_loss(nce_w, nce_b, contexts, embed,
                                                     args.num_sampled, V))
            grads = tape.gradient(loss, params)
            opt.apply_gradients(zip(grads, params))
            return loss

        losses = []

        def step_fn(c, x):
            loss = train_step(c, x)
            losses.append(loss)
            return loss

        _, secs = common.train(args, step_fn, next_batch, n_steps, graph_args=False)
        losses = [float(v) for v in losses]
        k = max(1, min(100, n_steps // 5))
        first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))

        # cosine similarities of the learned (input) embeddings
        e = embeddings.numpy()
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        sim = e @ e.T
        index = {w: i for i, w in enumerate(vocab)}
        print("nearest words (cosine similarity of the embeddings):")
        neighbours = {}
        for w in PROBES:
            if w not in index:
                continue
            row = sim[index[w]].copy()
            row[index[w]] = -np.inf
            near = [vocab[j] for j in np.argsort(-row)[:6]]
            neighbours[w] = near
            print(f"  {w:>10}: {', '.join(near)}")
        pairs = cooccurring_pairs(ids, vocab, args.window, top=30, skip=min(20, V // 4))
        related = float(np.mean([sim[a, b] for a, b in pairs]))
        r = np.random.default_rng(args.seed + 1)
        a, b = r.integers(0, V, 5000), r.integers(0, V, 5000)
        ok = a != b
        random_sim = float(np.mean(sim[a[ok], b[ok]]))
        print(f"nce loss {first:.3f} (first {k} steps) -> {last:.3f} (last {k}); mean similarity "
              f"of the 30 most frequent neighbouring word pairs {related:.3f} vs random pairs "
              f"{random_sim:.3f}")
        metrics = common.report("word2vec", {"first_loss": first, "final_loss": last,
                                             "cooccurring_similarity": related,
                                             "random_similarity": random_sim, "vocab": V},
                                secs, n_steps)
        return dict(metrics, neighbours=neighbours,
                    pairs=[(vocab[a], vocab[b]) for a, b in pairs])


if __name__ == "__main__":
    main()
