"""TF1's queue-based input (`tf.train.slice_input_producer`, `tf.train.batch`,
`tf.train.shuffle_batch`, ...), refused: those queues ran in background threads of the
TF runtime and fed ops by side effect; flowjit's answer is `tf.data`, which runs the same
pipeline in the program (`Dataset.from_tensor_slices(...).shuffle(n).batch(b)` and
`make_one_shot_iterator().get_next()`). Each refused name raises an UnimplementedError
that shows the replacement.

`tf.train.Coordinator` and `tf.train.start_queue_runners` stay: programs call them as
boilerplate around the training loop; with no queue runners, starting them does nothing.
"""
import threading

from .errors import missing

_TF_DATA = ("use tf.data instead: tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(buffer_size)"
            ".batch(batch_size).repeat(), then dataset.make_one_shot_iterator().get_next() in place of the "
            "queue's dequeued tensors")
REFUSED = {name: _TF_DATA for name in (
    "slice_input_producer", "string_input_producer", "input_producer", "range_input_producer",
    "batch", "shuffle_batch", "batch_join", "shuffle_batch_join", "maybe_batch", "maybe_shuffle_batch",
    "QueueRunner", "add_queue_runner", "limit_epochs", "match_filenames_once")}


class Coordinator:
    """Stops a set of threads together (TF1's tf.train.Coordinator)."""

    def __init__(self, clean_stop_exception_types=None):
        self._stop = threading.Event()
        self._error = None
        self._lock = threading.Lock()

    def request_stop(self, ex=None):
        with self._lock:
            if ex is not None and self._error is None:
                self._error = ex
            self._stop.set()

    def should_stop(self):
        return self._stop.is_set()

    def wait_for_stop(self, timeout=None):
        return self._stop.wait(timeout)

    def clear_stop(self):
        self._stop.clear()
        self._error = None

    def register_thread(self, thread):
        pass

    def join(self, threads=None, stop_grace_period_secs=120, ignore_live_threads=False):
        for t in threads or ():
            t.join(stop_grace_period_secs)
        if self._error is not None:
            raise self._error

    def stop_on_exception(self):
        coord = self

        class _Guard:
            def __enter__(self):
                return coord

            def __exit__(self, exc_type, exc, tb):
                if exc is not None:
                    coord.request_stop(exc)
                return True
        return _Guard()


def start_queue_runners(sess=None, coord=None, daemon=True, start=True, collection=None):
    """No queue runners exist in flowjit (see the module docstring): starts no thread."""
    return []


def refused(module, name):
    return missing(module, name, REFUSED.get(name))
