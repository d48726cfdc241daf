"""flowjit.compat.v1's `tf.metrics` and `tf.estimator`: streaming metrics against NumPy,
an Estimator with a model_fn on the digits (train, evaluate, predict, resume from its
checkpoint; the training step compiled once), numpy_input_fn's batches, tf.data input,
hooks, train_and_evaluate, and the TF1 errors."""
import logging
import os
import shutil

import numpy as np
import pytest

import flowjit as fj
import flowjit.compat.v1 as tf
from conftest import assert_close


@pytest.fixture(autouse=True)
def _fresh_graph(monkeypatch):
    while tf.get_default_session() is not None:
        tf.get_default_session().close()
    tf.reset_default_graph()
    # plans stay on the kernel-compiled Python entry tier (see tests/test_compat_v1.py)
    monkeypatch.setattr(fj.config, "compile_entry_after", 10**9)
    yield


@pytest.fixture(scope="module")
def digits():
    return fj.data.load_digits()


# ------------------------------------------------------------------------------------------
# tf.metrics
# ------------------------------------------------------------------------------------------

def test_metrics_stream_over_batches_like_numpy():
    labels = tf.placeholder(tf.int64, [None])
    preds = tf.placeholder(tf.int64, [None])
    w = tf.placeholder(tf.float32, [None])
    x = tf.placeholder(tf.float32, [None])
    acc, acc_op = tf.metrics.accuracy(labels=labels, predictions=preds)
    wacc, wacc_op = tf.metrics.accuracy(labels, preds, weights=w, name="weighted_acc")
    mean, mean_op = tf.metrics.mean(x, weights=w)
    yf, pf = tf.cast(labels, tf.float32), tf.cast(preds, tf.float32)
    mse, mse_op = tf.metrics.mean_squared_error(yf, pf)
    mae, mae_op = tf.metrics.mean_absolute_error(yf, pf)
    rmse, rmse_op = tf.metrics.root_mean_squared_error(yf, pf)
    prec, prec_op = tf.metrics.precision(labels, preds)
    rec, rec_op = tf.metrics.recall(labels, preds)
    values = [acc, wacc, mean, mse, mae, rmse, prec, rec]
    updates = [acc_op, wacc_op, mean_op, mse_op, mae_op, rmse_op, prec_op, rec_op]
    # TF1's state: local (not global, not trainable) variables, also METRIC_VARIABLES
    names = [v.op.name for v in tf.local_variables()]
    assert names[:4] == ["accuracy/total", "accuracy/count", "weighted_acc/total", "weighted_acc/count"]
    assert "precision/true_positives/count" in names and "recall/false_negatives/count" in names
    assert tf.global_variables() == [] and tf.trainable_variables() == []
    assert tf.get_collection("metric_variables") == tf.local_variables()
    assert acc.dtype == tf.float32 and acc.shape.ndims == 0

    rng = np.random.RandomState(0)
    batches = [(rng.randint(0, 3, n), rng.randint(0, 3, n), rng.rand(n).astype(np.float32),
                rng.randn(n).astype(np.float32)) for n in (7, 12, 5)]
    Y, P, W, X = (np.concatenate(c) for c in zip(*batches))
    with tf.Session() as sess:
        sess.run(tf.local_variables_initializer())
        assert sess.run(values) == [0.0] * 8             # div_no_nan before any batch
        for k, (y, p, ww, xx) in enumerate(batches):
            got = sess.run(updates, feed_dict={labels: y, preds: p, w: ww, x: xx})
            y_, p_ = (np.concatenate(c) for c in list(zip(*batches[:k + 1]))[:2])
            assert_close(got[0], np.float32(np.mean(y_ == p_)))      # update_op: the metric so far
        got = sess.run(values)
        tp = np.sum((Y != 0) & (P != 0))
        want = [np.mean(Y == P), np.sum(W * (Y == P)) / np.sum(W), np.sum(W * X) / np.sum(W),
                np.mean((Y - P) ** 2.0), np.mean(np.abs(Y - P)), np.sqrt(np.mean((Y - P) ** 2.0)),
                tp / np.sum(P != 0), tp / np.sum(Y != 0)]
        for g, e in zip(got, want):
            assert_close(g, np.float32(e), rtol=1e-5, atol=1e-6)
        # reading the value does not change it; re-initializing the locals resets it
        assert sess.run(values) == got
        sess.run(tf.local_variables_initializer())
        assert sess.run(acc) == 0.0
        sess.run(acc_op, feed_dict={labels: [1, 2], preds: [1, 1]})
        assert sess.run(acc) == 0.5


def test_metrics_shapes_collections_and_errors():
    # a last dim of 1 is squeezed (TF1's remove_squeezable_dimensions); predictions are
    # cast to the labels' dtype
    labels = tf.constant([[1], [0], [1]], tf.int32)
    preds = tf.constant([1, 1, 1], tf.int64)
    acc, acc_op = tf.metrics.accuracy(labels, preds, metrics_collections=["m"], updates_collections=["u"])
    assert tf.get_collection("m") == [acc] and tf.get_collection("u") == [acc_op]
    tp, tp_op = tf.metrics.true_positives(labels, preds)
    with tf.Session() as sess:
        sess.run(tf.local_variables_initializer())
        sess.run([acc_op, tp_op])
        assert_close(sess.run(acc), np.float32(2 / 3))
        assert sess.run(tp) == 2.0
    with pytest.raises(ValueError, match="incompatible"):
        tf.metrics.accuracy(tf.constant([1, 2, 3]), tf.constant([1, 2]))
    with pytest.raises(tf.errors.UnimplementedError, match="tf.metrics.auc"):
        tf.metrics.auc


# ------------------------------------------------------------------------------------------
# tf.estimator with a model_fn
# ------------------------------------------------------------------------------------------

def softmax_model_fn(features, labels, mode, params):
    """A dense softmax classifier on the 64 pixels of the digits (TF1 tutorial style)."""
    x = features["x"]
    W = tf.Variable(tf.zeros([64, 10]), name="W")
    b = tf.Variable(tf.zeros([10]), name="b")
    logits = tf.matmul(x, W) + b
    classes = tf.argmax(logits, 1)
    predictions = {"classes": classes, "probabilities": tf.nn.softmax(logits)}
    if mode == tf.estimator.ModeKeys.PREDICT:
        return tf.estimator.EstimatorSpec(mode, predictions=predictions)
    loss = tf.losses.softmax_cross_entropy(onehot_labels=labels, logits=logits)
    if mode == tf.estimator.ModeKeys.EVAL:
        accuracy = tf.metrics.accuracy(labels=tf.argmax(labels, 1), predictions=classes)
        return tf.estimator.EstimatorSpec(mode, loss=loss, eval_metric_ops={"accuracy": accuracy})
    optimizer = tf.train.GradientDescentOptimizer(params["learning_rate"])
    train_op = optimizer.minimize(loss, global_step=tf.train.get_global_step())
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def _inputs(digits):
    train = tf.estimator.inputs.numpy_input_fn(
        x={"x": digits.train.images}, y=digits.train.labels, batch_size=64, num_epochs=None, shuffle=True)
    evaluate = tf.estimator.inputs.numpy_input_fn(
        x={"x": digits.test.images}, y=digits.test.labels, batch_size=100, num_epochs=1, shuffle=False)
    return train, evaluate


def test_estimator_trains_evaluates_predicts_and_resumes(digits, tmp_path, caplog):
    model_dir = str(tmp_path / "model")
    config = tf.estimator.RunConfig(tf_random_seed=7, log_step_count_steps=50)
    est = tf.estimator.Estimator(softmax_model_fn, model_dir=model_dir, config=config,
                                 params={"learning_rate": 0.5})
    assert est.model_dir == model_dir and est.config.model_dir == model_dir
    train_input, eval_input = _inputs(digits)

    s0 = fj.stats()
    with caplog.at_level(logging.INFO, logger="tensorflow"):
        assert est.train(train_input, steps=120) is est
    s1 = fj.stats()
    # one compiled plan for the training step (and one reading the global step): the
    # 119 steps after the first reuse it
    assert s1["traces"] - s0["traces"] <= 3
    assert s1["cache_hits"] - s0["cache_hits"] >= 119
    log = caplog.text
    assert "loss = " in log and ", step = 1\n" in log and ", step = 100 (" in log
    assert f"Saving checkpoints for 120 into {model_dir}" in log

    # checkpoints: the start (0) and the end, with TF1's names and state file
    assert est.latest_checkpoint() == os.path.join(model_dir, "model.ckpt-120")
    assert tf.train.latest_checkpoint(model_dir) == est.latest_checkpoint()
    assert os.path.exists(os.path.join(model_dir, "model.ckpt-0.index.json"))
    assert est.get_variable_names() == ["W", "b", "global_step"]
    assert est.get_variable_value("global_step") == 120

    result = est.evaluate(eval_input)
    assert sorted(result) == ["accuracy", "global_step", "loss"]
    assert result["global_step"] == 120
    assert result["accuracy"] > 0.9
    assert 0.0 < result["loss"] < 0.6

    preds = list(est.predict(tf.estimator.inputs.numpy_input_fn(
        x={"x": digits.test.images}, batch_size=50, shuffle=False)))
    assert len(preds) == len(digits.test.images)
    assert sorted(preds[0]) == ["classes", "probabilities"]
    assert preds[0]["probabilities"].shape == (10,)
    classes = np.array([p["classes"] for p in preds])
    assert_close(np.mean(classes == digits.test.labels.argmax(1)), result["accuracy"], atol=1e-6)
    # the loss metric is the mean of the batches' losses: recompute it from predict's
    probs = np.array([p["probabilities"] for p in preds])
    nll = -np.log(np.sum(probs * digits.test.labels, axis=1))
    batch_means = [nll[i:i + 100].mean() for i in range(0, len(nll), 100)]
    assert_close(result["loss"], np.float32(np.mean(batch_means)), rtol=1e-4)

    # a new Estimator on the same model_dir starts from the saved state
    est2 = tf.estimator.Estimator(softmax_model_fn, model_dir=model_dir, params={"learning_rate": 0.5})
    again = est2.evaluate(eval_input)
    assert again == result
    est2.train(train_input, steps=30)
    assert est2.get_variable_value("global_step") == 150
    after = est2.evaluate(eval_input)
    assert after["global_step"] == 150 and after["loss"] < result["loss"]
    # max_steps already reached: nothing to do; max_steps ahead: trains up to it
    est2.train(train_input, max_steps=100)
    assert est2.latest_checkpoint().endswith("model.ckpt-150")
    est2.train(train_input, max_steps=160)
    assert est2.get_variable_value("global_step") == 160
    # evaluate(steps=...) stops after that many batches
    assert est2.evaluate(eval_input, steps=2)["global_step"] == 160


def test_numpy_input_fn_batches_epochs_and_shuffle(tmp_path):
    def identity_model_fn(features, mode):
        return tf.estimator.EstimatorSpec(mode, predictions=tf.identity(features))

    est = tf.estimator.Estimator(identity_model_fn, model_dir=str(tmp_path))
    data = np.arange(10, dtype=np.float32)

    def run(**kw):
        return list(est.predict(tf.estimator.inputs.numpy_input_fn(data, **kw), **kw.pop("pk", {})))

    # an array x is one feature tensor; predictions that are one tensor yield values
    got = run(batch_size=4, shuffle=False)
    assert [float(v) for v in got] == list(range(10))
    # batches run across epochs; the last one may be smaller
    batches = list(est.predict(tf.estimator.inputs.numpy_input_fn(data, batch_size=4, num_epochs=2,
                                                                   shuffle=False),
                               yield_single_examples=False))
    assert [len(b) for b in batches] == [4, 4, 4, 4, 4]
    assert np.concatenate(batches).tolist() == list(range(10)) * 2
    batches = list(est.predict(tf.estimator.inputs.numpy_input_fn(data, batch_size=3, num_epochs=1,
                                                                   shuffle=False),
                               yield_single_examples=False))
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    # shuffled: each epoch is a permutation
    got = np.array(run(batch_size=3, num_epochs=2, shuffle=True))
    assert sorted(got[:10]) == list(range(10)) and sorted(got[10:]) == list(range(10))
    assert got[:10].tolist() != list(range(10)) or got[10:].tolist() != list(range(10))
    # num_epochs=None repeats for ever
    gen = est.predict(tf.estimator.inputs.numpy_input_fn(data, batch_size=4, num_epochs=None, shuffle=False))
    assert [float(next(gen)) for _ in range(25)] == [float(k % 10) for k in range(25)]
    gen.close()
    from flowjit.compat.v1.estimator.inputs import numpy_input_fn
    assert numpy_input_fn is tf.estimator.inputs.numpy_input_fn
    # dtypes follow the arrays
    ints = list(est.predict(tf.estimator.inputs.numpy_input_fn(np.arange(3, dtype=np.int64), shuffle=False)))
    assert ints[2] == 2 and ints[2].dtype == np.int64


def test_predict_mode_without_labels(digits, tmp_path):
    def model_fn(features, labels, mode):
        assert labels is None if mode == tf.estimator.ModeKeys.PREDICT else labels is not None
        W = tf.Variable(tf.ones([64, 3]), name="W")
        scores = tf.matmul(features["x"], W)
        preds = {"scores": scores, "total": tf.reduce_sum(scores, 1)}
        if mode == tf.estimator.ModeKeys.PREDICT:
            return tf.estimator.EstimatorSpec(mode, predictions=preds)
        loss = tf.reduce_mean(scores)
        train_op = tf.train.GradientDescentOptimizer(0.0).minimize(loss, global_step=tf.train.get_global_step())
        return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)

    est = tf.estimator.Estimator(model_fn, model_dir=str(tmp_path))
    x = digits.test.images[:10]
    # no checkpoint yet: initialized variables, as TF1
    out = list(est.predict(tf.estimator.inputs.numpy_input_fn({"x": x}, batch_size=4, shuffle=False),
                           predict_keys=["total"]))
    assert len(out) == 10 and list(out[0]) == ["total"]
    assert_close(np.array([o["total"] for o in out]), x.sum(1) * 3, rtol=1e-5)
    # an input_fn that also gives labels: predict ignores them
    both = tf.estimator.inputs.numpy_input_fn({"x": x}, np.zeros(10, np.float32), batch_size=5,
                                              shuffle=False)
    out = list(est.predict(both, yield_single_examples=False))
    assert [o["scores"].shape for o in out] == [(5, 3), (5, 3)]
    with pytest.raises(ValueError, match="Expected to run at least one output"):
        next(est.predict(both, predict_keys=["nope"]))


def test_estimator_errors(digits, tmp_path):
    train_input, _ = _inputs(digits)

    def make(**spec):
        """An Estimator whose model_fn returns the EstimatorSpec fields `spec` gives
        (None: left out; a callable: made in the model_fn's graph)."""
        def model_fn(features, labels, mode):
            W = tf.Variable(tf.zeros([64, 10]), name="W")
            out = tf.matmul(features["x"], W)
            loss = tf.reduce_mean(tf.square(out - labels)) if labels is not None else None
            train_op = tf.train.GradientDescentOptimizer(0.1).minimize(
                loss, global_step=tf.train.get_global_step()) if loss is not None else None
            kw = {"loss": loss, "train_op": train_op}
            kw.update({k: v() if callable(v) else v for k, v in spec.items()})
            return tf.estimator.EstimatorSpec(mode, **{k: v for k, v in kw.items() if v is not None})
        return tf.estimator.Estimator(model_fn, model_dir=str(tmp_path))

    with pytest.raises(ValueError, match="Missing loss"):
        make(loss=None).train(train_input, steps=1)
    with pytest.raises(ValueError, match="Missing train_op"):
        make(train_op=None).train(train_input, steps=1)
    with pytest.raises(ValueError, match="Missing predictions"):
        next(make().predict(train_input))
    with pytest.raises(ValueError, match="Loss must be scalar"):
        make(loss=lambda: tf.zeros([3])).train(train_input, steps=1)
    with pytest.raises(ValueError, match="must be from the default graph"):
        make(loss=tf.constant(1.0)).train(train_input, steps=1)   # made outside the model_fn
    with pytest.raises(ValueError, match="Metric with name \"loss\""):
        make(eval_metric_ops=lambda: {"loss": (tf.constant(1.0), tf.no_op())}).evaluate(train_input, steps=1)
    with pytest.raises(ValueError, match="should return an EstimatorSpec"):
        tf.estimator.Estimator(lambda features, labels, mode: None, model_dir=str(tmp_path)).train(
            train_input, steps=1)
    with pytest.raises(ValueError, match="does not take labels"):
        tf.estimator.Estimator(lambda features, mode: None, model_dir=str(tmp_path)).train(train_input,
                                                                                            steps=1)
    with pytest.raises(ValueError, match="must include features"):
        tf.estimator.Estimator(lambda x, labels: None)
    with pytest.raises(ValueError, match="Can not provide both steps and max_steps"):
        make().train(train_input, steps=1, max_steps=2)
    with pytest.raises(ValueError, match="shuffle must be provided explicitly"):
        tf.estimator.inputs.numpy_input_fn({"x": digits.train.images})
    with pytest.raises(ValueError, match="mismatched"):
        tf.estimator.inputs.numpy_input_fn({"x": digits.train.images}, digits.train.labels[:5], shuffle=False)
    with pytest.raises(ValueError, match="Can not provide both save_checkpoints"):
        tf.estimator.RunConfig(save_checkpoints_steps=10, save_checkpoints_secs=10)
    with pytest.raises(ValueError, match="different values"):
        tf.estimator.Estimator(softmax_model_fn, model_dir=str(tmp_path / "a"),
                               config=tf.estimator.RunConfig(model_dir=str(tmp_path / "b")))
    # canned estimators are left out: the error names them and suggests a model_fn
    with pytest.raises(tf.errors.UnimplementedError, match="DNNClassifier.*model_fn"):
        tf.estimator.DNNClassifier(hidden_units=[10], feature_columns=[])
    assert not hasattr(tf.estimator, "LinearRegressor")
    # a NaN loss stops training (TF1's NanTensorHook)
    def nan_fn(features, labels, mode):
        W = tf.Variable(tf.zeros([64, 10]), name="W")
        loss = tf.reduce_mean(tf.matmul(features["x"], W)) / 0.0
        train_op = tf.train.GradientDescentOptimizer(0.1).minimize(loss, global_step=tf.train.get_global_step())
        return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)
    nan_est = tf.estimator.Estimator(nan_fn, model_dir=str(tmp_path / "nan"))
    with pytest.raises(tf.estimator.NanLossDuringTrainingError), np.errstate(all="ignore"):
        nan_est.train(train_input, steps=3)


def test_temporary_model_dir_run_config_and_hooks(digits):
    train_input, eval_input = _inputs(digits)

    class StopAt(tf.estimator.SessionRunHook):
        def __init__(self):
            self.seen = []

        def before_run(self, run_context):
            return tf.estimator.SessionRunArgs(tf.train.get_global_step())

        def after_run(self, run_context, run_values):
            self.seen.append(int(run_values.results))
            if run_values.results >= 7:
                run_context.request_stop()

    cfg = tf.estimator.RunConfig(save_checkpoints_steps=3, keep_checkpoint_max=2)
    assert cfg.save_checkpoints_secs is None and cfg.replace(tf_random_seed=3).tf_random_seed == 3
    est = tf.estimator.Estimator(softmax_model_fn, config=cfg, params={"learning_rate": 0.5})
    try:
        assert os.path.isdir(est.model_dir)          # a temporary directory, as TF1
        hook = StopAt()
        est.train(train_input, hooks=[hook], steps=100)
        assert hook.seen == [1, 2, 3, 4, 5, 6, 7]
        # saved every 3 steps and at the end; only the last 2 are kept
        assert est.latest_checkpoint().endswith("model.ckpt-7")
        kept = sorted(f for f in os.listdir(est.model_dir) if f.endswith(".index.json"))
        assert kept == ["model.ckpt-6.index.json", "model.ckpt-7.index.json"]
        # train_and_evaluate: trains to max_steps and evaluates the final checkpoint
        result, exports = tf.estimator.train_and_evaluate(
            est, tf.estimator.TrainSpec(train_input, max_steps=20),
            tf.estimator.EvalSpec(eval_input, steps=None, throttle_secs=0))
        assert result["global_step"] == 20 and exports == []
        kept = sorted(f for f in os.listdir(est.model_dir) if f.endswith(".index.json"))
        assert kept == ["model.ckpt-19.index.json", "model.ckpt-20.index.json"]   # (7+3k, the end)
    finally:
        shutil.rmtree(est.model_dir, ignore_errors=True)


def test_dataset_input_fn(digits, tmp_path):
    data = tf.data
    if not hasattr(data, "Dataset") or not hasattr(data, "make_one_shot_iterator"):
        pytest.skip("tf.data iterators are not available")
    est = tf.estimator.Estimator(softmax_model_fn, model_dir=str(tmp_path),
                                 params={"learning_rate": 0.5})

    def train_ds():
        return data.Dataset.from_tensor_slices(({"x": digits.train.images}, digits.train.labels)) \
            .shuffle(500, seed=1).repeat().batch(64)

    def eval_ds():
        return data.Dataset.from_tensor_slices(({"x": digits.test.images}, digits.test.labels)).batch(100)

    est.train(train_ds, steps=60)
    by_dataset = est.evaluate(eval_ds)
    _, eval_input = _inputs(digits)
    assert by_dataset == est.evaluate(eval_input)         # same batches, same results
    assert by_dataset["global_step"] == 60 and by_dataset["accuracy"] > 0.85
