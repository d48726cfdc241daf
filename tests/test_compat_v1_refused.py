"""What flowjit.compat.v1 leaves out says so: an UnimplementedError naming the feature
(and what to use instead), which is also an AttributeError so hasattr() still works;
Coordinator / start_queue_runners stay as the boilerplate they are."""
import threading

import pytest

import flowjit.compat.v1 as tf


def test_queue_input_is_refused_with_the_tf_data_replacement():
    with pytest.raises(tf.errors.UnimplementedError, match=r"tf\.train\.shuffle_batch .*tf\.data"):
        tf.train.shuffle_batch
    with pytest.raises(tf.errors.UnimplementedError, match=r"make_one_shot_iterator"):
        tf.train.slice_input_producer([1, 2, 3])
    assert not hasattr(tf.train, "string_input_producer")


def test_unknown_names_raise_unimplemented_not_a_bare_attribute_error():
    with pytest.raises(tf.errors.UnimplementedError, match=r"tf\.no_such_op is not implemented"):
        tf.no_such_op
    with pytest.raises(AttributeError):
        tf.no_such_op
    assert getattr(tf, "no_such_op", None) is None
    with pytest.raises(AttributeError):
        tf.__wrapped__


def test_coordinator_and_queue_runner_boilerplate():
    coord = tf.train.Coordinator()
    threads = tf.train.start_queue_runners(coord=coord)
    assert threads == [] and not coord.should_stop()
    seen = []

    def worker():
        while not coord.should_stop():
            seen.append(1)
            if len(seen) >= 3:
                coord.request_stop()
    t = threading.Thread(target=worker)
    t.start()
    coord.join([t])
    assert coord.should_stop() and len(seen) == 3
    coord2 = tf.train.Coordinator()
    with coord2.stop_on_exception():
        raise ValueError("boom")
    with pytest.raises(ValueError, match="boom"):
        coord2.join()
