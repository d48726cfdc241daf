"""tf.data on flowjit (`fj.data.Dataset.from_tensor_slices(...)...`), written as TF users
write it: each transformation against the NumPy result, shuffle's buffer statistics
and seeds, repeat/take/skip edge cases, TF1 iterators in a Session, and pipelines
feeding a jitted training step and keras `fit`."""
import collections
import time

import numpy as np
import pytest

import flowjit as tf
import flowjit.compat.v1 as tf1

Dataset = tf.data.Dataset


def values(ds):
    return list(ds.as_numpy_iterator())


def ints(ds):
    return [int(v) for v in ds.as_numpy_iterator()]


# --- sources ---------------------------------------------------------------------------------
def test_from_tensor_slices_tuple_dict_and_iteration_gives_tensors():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = np.arange(6)
    ds = Dataset.from_tensor_slices((x, y))
    assert len(ds) == 6 and int(ds.cardinality()) == 6
    spec = ds.element_spec
    assert spec[0].shape == (2,) and spec[0].dtype is tf.float32 and spec[1].dtype is tf.int64
    got = list(ds)
    assert len(got) == 6
    a, b = got[4]
    assert isinstance(a, tf.Tensor) and isinstance(b, tf.Tensor)
    np.testing.assert_array_equal(a.numpy(), x[4])
    assert int(b) == 4 and b.shape == ()
    it = iter(ds)
    first = next(it)
    np.testing.assert_array_equal(first[0], x[0])
    for _ in range(5):
        next(it)
    with pytest.raises(StopIteration):
        next(it)
    d = Dataset.from_tensor_slices({"image": x, "label": y})
    e = next(iter(d))
    assert set(e) == {"image", "label"}
    np.testing.assert_array_equal(e["image"].numpy(), x[0])


def test_conversion_rules_and_lists_are_tensors():
    assert Dataset.from_tensor_slices([1, 2, 3]).element_spec.dtype is tf.int32
    assert Dataset.from_tensor_slices([1.5, 2.0]).element_spec.dtype is tf.float32
    assert Dataset.from_tensor_slices(np.zeros(3)).element_spec.dtype is tf.float64
    assert ints(Dataset.from_tensor_slices([[1, 2], [3, 4]]).map(lambda r: tf.reduce_sum(r))) == [3, 7]
    u8 = Dataset.from_tensor_slices(np.arange(4, dtype=np.uint8))
    assert next(iter(u8)).dtype is tf.as_dtype(np.uint8)        # flowjit's nearest dtype
    assert values(Dataset.from_tensor_slices(["ab", "c"])) == [b"ab", b"c"]
    with pytest.raises(ValueError, match="not compatible"):
        Dataset.from_tensor_slices((np.zeros(3), np.zeros(4)))
    with pytest.raises(ValueError, match="rank >= 1"):
        Dataset.from_tensor_slices(np.float32(1.0))


def test_from_tensors_range_zip():
    ds = Dataset.from_tensors((np.arange(3), 7))
    assert len(ds) == 1
    (a, b), = values(ds)
    np.testing.assert_array_equal(a, [0, 1, 2]) and b == 7
    assert ints(Dataset.range(5)) == list(range(5))
    assert ints(Dataset.range(2, 9, 3)) == [2, 5, 8]
    assert ints(Dataset.range(5, 0, -2)) == [5, 3, 1]
    assert ints(Dataset.range(0)) == [] and Dataset.range(3).element_spec.dtype is tf.int64
    assert Dataset.range(3, dtype=tf.int32).element_spec.dtype is tf.int32
    z = Dataset.zip((Dataset.range(4), Dataset.range(10, 13)))
    assert values(z) == [(0, 10), (1, 11), (2, 12)] and len(z) == 3
    assert values(Dataset.zip(Dataset.range(2), Dataset.range(5, 7))) == [(0, 5), (1, 6)]
    d = values(Dataset.zip({"a": Dataset.range(2), "b": Dataset.from_tensor_slices([1.5, 2.5])}))
    assert d == [{"a": 0, "b": 1.5}, {"a": 1, "b": 2.5}]
    nested = Dataset.zip((Dataset.range(2), (Dataset.range(2), Dataset.range(2).map(lambda v: v * 10))))
    assert values(nested) == [(0, (0, 0)), (1, (1, 10))]


def test_from_generator():
    def gen():
        for i in range(1, 4):
            yield np.arange(i, dtype=np.float64), i
    ds = Dataset.from_generator(gen, output_signature=(tf.TensorSpec(shape=(None,), dtype=tf.float32),
                                                       tf.TensorSpec(shape=(), dtype=tf.int32)))
    got = values(ds)
    assert [len(a) for a, _ in got] == [1, 2, 3] and [b for _, b in got] == [1, 2, 3]
    assert got[0][0].dtype == np.float32 and ds.element_spec[0].shape == (None,)
    assert all(np.array_equal(a, c) for (a, _), (c, _) in zip(values(ds), got))   # called again per pass
    padded = next(iter(ds.padded_batch(3)))
    np.testing.assert_array_equal(padded[0].numpy(), [[0, 0, 0], [0, 1, 0], [0, 1, 2]])
    old = Dataset.from_generator(lambda: iter([[1, 2], [3, 4]]), output_types=tf.int64, output_shapes=[2])
    assert [list(v) for v in values(old)] == [[1, 2], [3, 4]]
    bad = Dataset.from_generator(lambda: iter([[1, 2, 3]]), output_types=tf.int64, output_shapes=[2])
    with pytest.raises(tf.errors.InvalidArgumentError, match="shape"):
        values(bad)
    with pytest.raises(TypeError):
        Dataset.from_generator(gen(), output_types=tf.int32)     # a generator object, not a callable


# --- map / filter / flat_map -------------------------------------------------------------------
def test_map_unpacks_tuples_and_takes_dicts():
    x = np.arange(10, dtype=np.float32)
    y = np.arange(10) % 3
    ds = Dataset.from_tensor_slices((x, y)).map(lambda a, b: (a * 2.0, tf.one_hot(b, 3)))
    got = values(ds)
    np.testing.assert_allclose([a for a, _ in got], x * 2)
    np.testing.assert_array_equal(np.stack([b for _, b in got]), np.eye(3)[y])
    assert ds.element_spec[1].shape == (3,)
    seen = []

    def f(a, b):
        seen.append((type(a), type(b)))
        return a + tf.cast(b, tf.float32)
    np.testing.assert_allclose(values(Dataset.from_tensor_slices((x, y)).map(f)), x + y)
    assert seen[0] == (tf.Tensor, tf.Tensor)
    d = Dataset.from_tensor_slices({"x": x, "y": y}).map(lambda e: e["x"] - 1.0)
    np.testing.assert_allclose(values(d), x - 1)
    lst = Dataset.range(3).map(lambda v: [v, v + 1])          # a list comes back as a tuple, as TF2
    assert values(lst) == [(0, 1), (1, 2), (2, 3)]
    py = Dataset.range(3).map(lambda v: int(v) ** 2)           # plain Python on eager tensors
    assert ints(py) == [0, 1, 4] and py.element_spec.dtype is tf.int32


def test_filter_and_flat_map():
    ds = Dataset.range(10).filter(lambda v: v % 3 == 0)
    assert ints(ds) == [0, 3, 6, 9] and int(ds.cardinality()) == tf.data.UNKNOWN_CARDINALITY
    with pytest.raises(TypeError, match="unknown"):
        len(ds)
    fm = Dataset.range(4).flat_map(lambda v: Dataset.range(v))
    assert ints(fm) == [0, 0, 1, 0, 1, 2]
    pairs = Dataset.from_tensor_slices((np.arange(6), np.arange(6) % 2)).filter(lambda a, b: b == 1)
    assert values(pairs) == [(1, 1), (3, 1), (5, 1)]


# --- batch ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,b,drop", [(10, 3, False), (10, 3, True), (9, 3, True), (2, 5, False), (2, 5, True)])
def test_batch_matches_numpy(n, b, drop):
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    y = np.arange(n)
    got = values(Dataset.from_tensor_slices((x, y)).batch(b, drop_remainder=drop))
    stop = n - n % b if drop else n
    want = [(x[i:i + b], y[i:i + b]) for i in range(0, stop, b) if len(y[i:min(i + b, stop)]) > 0]
    assert len(got) == len(want) == len(Dataset.from_tensor_slices(x).batch(b, drop_remainder=drop))
    for (a, c), (wa, wc) in zip(got, want):
        np.testing.assert_array_equal(a, wa)
        np.testing.assert_array_equal(c, wc)
    # the same batches through the element path (after a map)
    slow = values(Dataset.from_tensor_slices((x, y)).map(lambda p, q: (p, q)).batch(b, drop_remainder=drop))
    for (a, c), (sa, sc) in zip(got, slow):
        np.testing.assert_array_equal(a, sa)
        np.testing.assert_array_equal(c, sc)
    spec = Dataset.from_tensor_slices((x, y)).batch(b, drop_remainder=drop).element_spec
    assert spec[0].shape == ((b if drop else None), 2)


def test_batch_errors_unbatch_padded_batch():
    ragged = Dataset.range(1, 4).map(lambda v: tf.range(v))
    with pytest.raises(tf.errors.InvalidArgumentError, match="different shapes"):
        values(ragged.batch(3))
    padded = values(ragged.padded_batch(2, padding_values=-1))
    np.testing.assert_array_equal(padded[0], [[0, -1], [0, 1]])
    np.testing.assert_array_equal(padded[1], [[0, 1, 2]])
    fixed = values(ragged.padded_batch(3, padded_shapes=[5]))
    assert fixed[0].shape == (3, 5)
    x = np.arange(12).reshape(6, 2)
    round_trip = Dataset.from_tensor_slices(x).batch(4).unbatch()
    np.testing.assert_array_equal(np.stack(values(round_trip)), x)
    assert round_trip.element_spec.shape == (2,)
    with pytest.raises(tf.errors.InvalidArgumentError):
        Dataset.range(3).batch(0)


# --- shuffle -----------------------------------------------------------------------------------------
def test_shuffle_is_a_permutation_deterministic_for_a_seed():
    x = np.arange(100)
    a = ints(Dataset.from_tensor_slices(x).shuffle(100, seed=3))
    assert sorted(a) == list(x) and a != list(x)
    assert ints(Dataset.from_tensor_slices(x).shuffle(100, seed=3)) == a        # a new dataset: same order
    assert ints(Dataset.from_tensor_slices(x).shuffle(100, seed=4)) != a
    ds = Dataset.from_tensor_slices(x).shuffle(100, seed=3)
    e1, e2 = ints(ds), ints(ds)
    assert e1 == a and e2 != e1 and sorted(e2) == list(x)                       # reshuffled each epoch
    fixed = Dataset.from_tensor_slices(x).shuffle(100, seed=3, reshuffle_each_iteration=False)
    assert ints(fixed) == ints(fixed)
    rep = ints(Dataset.from_tensor_slices(x).shuffle(100, seed=3).repeat(2))
    assert rep[:100] == a and sorted(rep[100:]) == list(x) and rep[100:] != a
    # the global seed makes seedless shuffles repeat too
    tf.random.set_seed(7)
    g1 = ints(Dataset.range(50).shuffle(50))
    tf.random.set_seed(7)
    assert ints(Dataset.range(50).shuffle(50)) == g1


def test_shuffle_buffer_semantics():
    n, b = 200, 10
    for seed in range(20):
        out = ints(Dataset.range(n).shuffle(b, seed=seed))
        assert sorted(out) == list(range(n))
        # element i enters the buffer after i - b outputs: it cannot come out before position i - b + 1
        assert all(pos >= v - b + 1 for pos, v in enumerate(out))
        assert out[0] < b
    assert ints(Dataset.range(20).shuffle(1)) == list(range(20))


def test_shuffle_statistics_uniform():
    # the first output is uniform over the buffer; a full shuffle puts every element
    # everywhere with equal probability
    first = collections.Counter(ints(Dataset.range(30).shuffle(5, seed=s).take(1))[0] for s in range(2000))
    assert set(first) == set(range(5))
    assert all(abs(c / 2000 - 0.2) < 0.04 for c in first.values()), first
    pos = np.zeros((6, 6))
    ds = Dataset.range(6).shuffle(6, seed=1)
    for _ in range(3000):
        for p, v in enumerate(ints(ds)):
            pos[v, p] += 1
    np.testing.assert_allclose(pos / 3000, 1 / 6, atol=0.035)


def test_shuffle_block_and_element_paths_agree():
    x = np.arange(5000)
    for b in (1, 7, 300, 5000, 10000):
        fast = ints(Dataset.from_tensor_slices(x).repeat(2).shuffle(b, seed=9).batch(64).unbatch())
        slow = ints(Dataset.from_tensor_slices(x).map(lambda v: v).repeat(2).shuffle(b, seed=9))
        mixed = ints(Dataset.range(5000).concatenate(Dataset.from_tensor_slices(x)).shuffle(b, seed=9))
        assert fast == slow == mixed
        assert sorted(fast) == sorted(list(x) * 2)


# --- repeat / take / skip / others -----------------------------------------------------------------------
def test_repeat_take_skip_edge_cases():
    r = Dataset.range(3)
    assert ints(r.repeat(2)) == [0, 1, 2, 0, 1, 2] and len(r.repeat(2)) == 6
    assert ints(r.repeat(0)) == [] and len(r.repeat(0)) == 0
    inf = r.repeat()
    assert int(inf.cardinality()) == tf.data.INFINITE_CARDINALITY
    with pytest.raises(TypeError, match="infinite"):
        len(inf)
    assert ints(inf.take(7)) == [0, 1, 2, 0, 1, 2, 0] and len(inf.take(7)) == 7
    assert ints(r.repeat(-1).take(4)) == [0, 1, 2, 0]
    assert ints(Dataset.range(0).repeat()) == []                     # an empty dataset repeated is empty
    assert ints(r.take(0)) == [] and ints(r.take(-1)) == [0, 1, 2] and ints(r.take(10)) == [0, 1, 2]
    assert len(r.take(10)) == 3 and len(r.take(-1)) == 3
    assert ints(r.skip(0)) == [0, 1, 2] and ints(r.skip(2)) == [2] and ints(r.skip(5)) == []
    assert ints(r.skip(-1)) == [] and len(r.skip(-1)) == 0 and len(r.skip(5)) == 0
    assert ints(Dataset.range(10).skip(3).take(4)) == [3, 4, 5, 6]
    assert ints(Dataset.range(10).batch(3).skip(1).take(1).unbatch()) == [3, 4, 5]
    assert ints(Dataset.range(10).shuffle(10, seed=0).take(3)) == ints(Dataset.range(10).shuffle(10, seed=0))[:3]


def test_prefetch_cache_enumerate_shard_concatenate():
    calls = []

    def f(v):
        calls.append(int(v))
        return v * 2
    ds = Dataset.range(4).map(f).cache().prefetch(tf.data.AUTOTUNE)
    assert ints(ds) == [0, 2, 4, 6] and ints(ds) == [0, 2, 4, 6] and calls == [0, 1, 2, 3]
    cached = Dataset.range(6).shuffle(6, seed=1).cache()
    assert ints(cached) == ints(cached)                          # cache after shuffle freezes the order
    assert values(Dataset.range(5, 8).enumerate()) == [(0, 5), (1, 6), (2, 7)]
    assert values(Dataset.from_tensor_slices(np.arange(3.0)).enumerate(start=10))[0] == (10, 0.0)
    assert ints(Dataset.range(10).shard(3, 1)) == [1, 4, 7] and len(Dataset.range(10).shard(3, 1)) == 3
    assert ints(Dataset.range(10).batch(4).unbatch().shard(4, 3)) == [3, 7]
    assert ints(Dataset.range(3).concatenate(Dataset.range(10, 12))) == [0, 1, 2, 10, 11]
    assert len(Dataset.range(3).concatenate(Dataset.range(10, 12))) == 5
    assert int(Dataset.range(5).reduce(np.int64(0), lambda s, v: s + v)) == 10
    assert tf.data.experimental.AUTOTUNE == tf.data.AUTOTUNE


def test_values_do_not_alias_the_source():
    x = np.arange(6, dtype=np.float32)
    ds = Dataset.from_tensor_slices(x).batch(3).cache()
    for t in ds:
        t.numpy()[:] = -1                    # a user scribbling on a batch...
    np.testing.assert_array_equal(x, np.arange(6))
    np.testing.assert_array_equal(np.concatenate(values(ds)), np.arange(6))


def test_get_next_out_of_range_and_numpy_iterator():
    it = iter(Dataset.range(2))
    assert int(it.get_next()) == 0 and int(it.get_next()) == 1
    with pytest.raises(tf.errors.OutOfRangeError):
        it.get_next()
    v = next(Dataset.from_tensor_slices(np.arange(3, dtype=np.int32)).as_numpy_iterator())
    assert isinstance(v, np.int32)


def test_common_chain_is_fast():
    x = np.random.default_rng(0).random((60000, 784), dtype=np.float32)
    y = np.arange(60000) % 10
    ds = Dataset.from_tensor_slices((x, y)).shuffle(60000, seed=0).batch(32).prefetch(1)
    t0 = time.perf_counter()
    n = 0
    seen = 0
    for xb, yb in ds:
        n += 1
        seen += int(xb.shape[0])
    secs = time.perf_counter() - t0
    assert n == 1875 and seen == 60000
    assert secs < 1.0, f"one epoch of shuffle(60000).batch(32) took {secs:.2f}s"


# --- TF1: iterators in a Session ---------------------------------------------------------------------
def test_tf1_one_shot_iterator_out_of_range():
    g = tf1.Graph()
    with g.as_default():
        x = np.arange(10, dtype=np.float32).reshape(5, 2)
        ds = tf1.data.Dataset.from_tensor_slices((x, np.arange(5))).batch(2)
        a, b = ds.make_one_shot_iterator().get_next()
        assert a.shape.as_list() == [None, 2] and b.dtype is tf1.int64
        doubled = a * 2.0
        got = []
        with tf1.Session() as sess:
            while True:
                try:
                    got.append(sess.run([doubled, b]))
                except tf1.errors.OutOfRangeError:
                    break
            with pytest.raises(tf1.errors.OutOfRangeError):     # stays at the end
                sess.run(b)
        assert [len(v) for _, v in got] == [2, 2, 1]
        np.testing.assert_array_equal(np.concatenate([d for d, _ in got]), x * 2)
        it2 = tf1.data.make_one_shot_iterator(tf1.data.Dataset.range(3))
        nxt = it2.get_next()
        with tf1.Session() as sess:        # each session starts its own pass
            assert [sess.run(nxt) for _ in range(3)] == [0, 1, 2]
        with tf1.Session() as sess:
            assert sess.run(nxt) == 0


def test_tf1_initializable_iterator_with_placeholders():
    g = tf1.Graph()
    with g.as_default():
        xp = tf1.placeholder(tf1.float32, [None, 3])
        yp = tf1.placeholder(tf1.int64, [None])
        mapped = tf1.data.Dataset.from_tensor_slices((xp, yp)).map(lambda a, b: (a / 10.0, b + 1))
        it = mapped.batch(2).make_initializable_iterator()
        a, b = it.get_next()
        total = tf1.reduce_sum(a)
        with tf1.Session() as sess:
            with pytest.raises(tf1.errors.FailedPreconditionError, match="not been initialized"):
                sess.run(total)
            for n in (5, 2):                  # re-initialized with other data
                x = np.ones((n, 3), np.float32) * n
                sess.run(it.initializer, feed_dict={xp: x, yp: np.arange(n)})
                sums, labels = [], []
                while True:
                    try:
                        s, lab = sess.run([total, b])
                    except tf1.errors.OutOfRangeError:
                        break
                    sums.append(s)
                    labels.extend(lab)
                assert labels == list(range(1, n + 1))
                np.testing.assert_allclose(sum(sums), n * 3 * n / 10.0, rtol=1e-6)
            with pytest.raises(tf1.errors.InvalidArgumentError, match="feed"):
                sess.run(it.initializer)              # the placeholders must be fed
        assert mapped._fn.graph_fn is not None        # the TF1 map function was traced into a graph


def test_tf1_reinitializable_iterator_and_training_loop():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    g = tf1.Graph()
    with g.as_default():
        tf1.set_random_seed(1)
        train = tf1.data.Dataset.from_tensor_slices((x[:300], y[:300])).shuffle(300).repeat(5).batch(30)
        test = tf1.data.Dataset.from_tensor_slices((x[300:], y[300:])).batch(100)
        it = tf1.data.Iterator.from_structure(train.output_types, train.output_shapes)
        xb, yb = it.get_next()
        w = tf1.Variable(tf1.zeros([2, 2]))
        bias = tf1.Variable(tf1.zeros([2]))
        logits = tf1.matmul(xb, w) + bias
        loss = tf1.reduce_mean(tf1.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=logits))
        step = tf1.train.GradientDescentOptimizer(0.5).minimize(loss)
        acc = tf1.reduce_mean(tf1.cast(tf1.equal(tf1.argmax(logits, 1), yb), tf1.float32))
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            sess.run(it.make_initializer(train))
            steps = 0
            try:
                while True:
                    sess.run(step)
                    steps += 1
            except tf1.errors.OutOfRangeError:
                pass
            assert steps == 50
            sess.run(it.make_initializer(test))
            assert sess.run(acc) > 0.9


# --- training -------------------------------------------------------------------------------------------
def _blobs(n=600, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(3, 5))
    y = rng.integers(0, 3, n)
    return (centers[y] + rng.normal(size=(n, 5))).astype(np.float32), y


def test_pipeline_feeds_a_jitted_training_step():
    x, y = _blobs()
    ds = Dataset.from_tensor_slices((x, y)).shuffle(600, seed=0).batch(32).prefetch(tf.data.AUTOTUNE)
    tf.random.set_seed(0)
    w = tf.Variable(tf.random.normal((5, 3), stddev=0.1))
    b = tf.Variable(tf.zeros((3,)))
    opt = tf.optimizers.Adam(0.05)

    @tf.jit
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(yb, xb @ w + b))
        opt.apply_gradients(zip(tape.gradient(loss, [w, b]), [w, b]))
        return loss
    losses = [float(step(xb, yb)) for _ in range(3) for xb, yb in ds]
    assert len(losses) == 3 * 19 and losses[-1] < losses[0]
    pred = np.argmax(x @ w.numpy() + b.numpy(), 1)
    assert np.mean(pred == y) > 0.95


def test_keras_fit_on_a_dataset():
    x, y = _blobs(seed=1)
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.layers.Dense(16, activation="relu"), tf.keras.layers.Dense(3)])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.02),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    epochs_seen = []

    class Count(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            epochs_seen.append(epoch)
    ds = Dataset.from_tensor_slices((x[:500], y[:500])).shuffle(500, seed=0).batch(50)
    hist = model.fit(ds, epochs=3, verbose=0, callbacks=[Count()])
    assert epochs_seen == [0, 1, 2] and len(hist.history["loss"]) == 3
    assert hist.history["loss"][2] < hist.history["loss"][0]
    loss, acc = model.evaluate(Dataset.from_tensor_slices((x[500:], y[500:])).batch(32), verbose=0)
    assert acc > 0.9
    pred = model.predict(Dataset.from_tensor_slices(x[500:]).batch(32), verbose=0)
    assert pred.shape == (100, 3)


def test_legacy_dataset_still_works():
    d = tf.data.Dataset(np.arange(10.0).reshape(10, 1), np.arange(10), seed=0)
    xb, yb = d.next_batch(4)
    assert xb.shape == (4, 1) and d.num_examples == 10
    assert sum(len(b[0]) for b in d) == 10
