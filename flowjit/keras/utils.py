"""`keras.utils` on flowjit: `to_categorical`, `normalize`, `set_random_seed` and
`Progbar`, the progress bar `fit` / `evaluate` / `predict` print.

`Progbar` reproduces Keras 3's output byte for byte (checked against Keras 3.15): the
same bar characters and ANSI colours, the same step-time and ETA formatting, the same
averaging of metric values. Like Keras, it redraws the line in place (`\\b`s and `\\r`)
on every POSIX system, whether or not stdout is a terminal: Keras decides with
`isatty() or "posix" in sys.modules`, so piping a Keras program's output to a file
gives the same bytes as a terminal does.
"""
import math
import os
import random
import sys
import time

import numpy as np

from ..frontend import random as _fj_random
from . import random_state


def to_categorical(x, num_classes=None):
    """Class ids -> one-hot float32 array with the class axis last.

    As in Keras: `x` is cast to int64 (floats truncate), a trailing dimension of size 1
    is dropped first (`(n, 1)` -> `(n, num_classes)`), and `num_classes` defaults to
    `max(x) + 1`. Keras 3 returns float64 for NumPy input; flowjit returns float32, the
    dtype every flowjit model computes in. Ids outside `0..num_classes-1` raise a
    ValueError (Keras raises IndexError for too-large ids and silently wraps negative
    ones)."""
    x = np.array(x, dtype="int64")
    shape = x.shape
    if len(shape) > 1 and shape[-1] == 1:
        shape = shape[:-1]
    x = x.reshape(-1)
    if not num_classes:
        if x.size == 0:
            raise ValueError("to_categorical: cannot infer num_classes from an empty array; pass num_classes")
        num_classes = int(x.max()) + 1
    num_classes = int(num_classes)
    if x.size and (x.min() < 0 or x.max() >= num_classes):
        bad = int(x.min()) if x.min() < 0 else int(x.max())
        raise ValueError(f"to_categorical: class id {bad} is outside 0..{num_classes - 1} "
                         f"(num_classes={num_classes})")
    out = np.zeros((x.size, num_classes), np.float32)
    out[np.arange(x.size), x] = 1.0
    return out.reshape(shape + (num_classes,))


def normalize(x, axis=-1, order=2):
    """`x` divided by its `order`-norm along `axis` (zero norms are left as 1, so zero
    vectors stay zero). Keras's NumPy path replaces `axis=0` by -1 (`axis or -1`); here
    `axis=0` means axis 0."""
    x = np.asarray(x)
    norm = np.linalg.norm(x, order, axis, keepdims=True)
    norm = np.where(norm == 0, 1, norm)
    return x / norm


def set_random_seed(seed):
    """Make every later random draw repeatable: seeds Python's `random`, NumPy's global
    generator, `fj.random` (op-level draws) and the sequence initializers, Dropout and
    `fit`'s shuffling take their seeds from (`flowjit.keras.random_state`)."""
    if not isinstance(seed, int):
        raise ValueError(f"Expected `seed` argument to be an integer. Received: seed={seed} "
                         f"(of type {type(seed)})")
    random.seed(seed)
    np.random.seed(seed)
    _fj_random.set_seed(seed)
    random_state.seed(seed)


def print_msg(message, line_break=True):
    """Write to stdout now (flushed), as Keras's `io_utils.print_msg` does when
    interactive logging is on (its default). sys.stdout is looked up at each call so a
    redirected or captured stdout gets the text."""
    message = str(message) + ("\n" if line_break else "")
    try:
        sys.stdout.write(message)
    except UnicodeEncodeError:
        # a terminal that cannot encode the bar: Keras falls back to Keras 2's '='
        encoding = sys.stdout.encoding or "utf-8"
        message = message.replace("\u2501", "=").encode(encoding, errors="ignore").decode(encoding)
        sys.stdout.write(message)
    sys.stdout.flush()


class Progbar:
    """Keras 3's progress bar.

    `update(current, values)` reports that step `current` is done; `values` is a list of
    `(name, value)`. Names in `stateful_metrics` are shown as given; the others are
    averaged over the steps since the start (weighted by the steps each value covers),
    except on the finalizing update, which shows the values passed to it. Pass
    `stateless_metrics=set()` (what `fit`'s ProgbarLogger does) to show every value as
    given. `verbose=1` redraws one line, at most every `interval` seconds and always on
    the final step; `verbose=2` prints only the final line:
    `1875/1875 - 3s - 2ms/step - accuracy: 0.9100 - loss: 0.3000`."""

    def __init__(self, target, width=20, verbose=1, interval=0.05, stateful_metrics=None,
                 stateless_metrics=None, unit_name="step"):
        if stateful_metrics is not None and stateless_metrics is not None:
            raise ValueError("Only one of `stateful_metrics` or `stateless_metrics` can be provided.")
        self.target = target
        self.width = width
        self.verbose = verbose
        self.interval = interval
        self.unit_name = unit_name
        # exactly one of the two sets is kept: the exceptions to the default
        if stateless_metrics is not None:
            self.stateful_metrics, self.stateless_metrics = None, set(stateless_metrics)
        else:
            self.stateful_metrics, self.stateless_metrics = set(stateful_metrics or ()), None
        # Keras's test, kept as is: true on every POSIX system ("posix" is os's
        # platform module), so the line is redrawn in place even when piped
        self._dynamic_display = ((hasattr(sys.stdout, "isatty") and sys.stdout.isatty())
                                 or "ipykernel" in sys.modules or os.name == "posix"
                                 or "PYCHARM_HOSTED" in os.environ)
        self._seen_so_far = 0
        self._values = {}            # name -> [weighted sum, weight]
        self._values_order = []
        self._start = time.time()
        self._last_update = 0
        self._time_after_first_step = None
        self._prev_total_width = 0

    def update(self, current, values=None, finalize=None):
        if finalize is None:
            finalize = False if self.target is None else current >= self.target
        for k, v in values or []:
            if k not in self._values_order:
                self._values_order.append(k)
            if self.stateful_metrics is not None:
                stateless = k not in self.stateful_metrics
            else:
                stateless = k in self.stateless_metrics
            if stateless and not finalize:
                # the value stands for every step since the last update
                n = max(current - self._seen_so_far, 1)
                if k in self._values:
                    self._values[k][0] += v * n
                    self._values[k][1] += n
                else:
                    self._values[k] = [v * n, n]
            else:
                self._values[k] = [v, 1]
        self._seen_so_far = current

        now = time.time()
        time_per_unit = self._estimate_step_duration(current, now)
        if self.verbose == 1:
            if now - self._last_update < self.interval and not finalize:
                return
            self._print_line(current, now, time_per_unit, finalize)
        elif self.verbose == 2 and finalize and self.target is not None and self.target > 0:
            digits = int(math.log10(self.target)) + 1
            info = f"%{digits}d/%d - {now - self._start:.0f}s -" % (current, self.target)
            info += self._format_time(time_per_unit)
            for k in self._values_order:
                avg = self._average(k)
                # Keras compares without abs() here (verbose=1 uses abs): a negative
                # value prints in scientific notation
                info += f" - {k}: {avg:.4f}" if avg > 1e-3 else f" - {k}: {avg:.4e}"
            print_msg(info + "\n", line_break=False)
        self._last_update = now

    def add(self, n, values=None):
        self.update(self._seen_so_far + n, values)

    def _print_line(self, current, now, time_per_unit, finalize):
        # the ANSI escapes are not visible: count their characters out of the width
        special = 0
        message = "\b" * self._prev_total_width + "\r" if self._dynamic_display else "\n"
        if self.target is not None and self.target > 0:
            digits = int(math.log10(self.target)) + 1
            bar = f"\x1b[1m{f'%{digits}d/%d' % (current, self.target)}\x1b[0m "
            special += 8
            done = int(self.width * float(current) / self.target)
            if done > 0:
                bar += f"\x1b[32m{chr(0x2501) * done}\x1b[0m"
                special += 9
            bar += f"\x1b[37m{chr(0x2501) * (self.width - done)}\x1b[0m"
            special += 9
        else:
            bar = "%7d/Unknown" % current
        if self.target is not None and self.target > 0 and not finalize:
            eta = time_per_unit * (self.target - current)
            if eta > 3600:
                eta_text = "%d:%02d:%02d" % (eta // 3600, (eta % 3600) // 60, eta % 60)
            elif eta > 60:
                eta_text = "%d:%02d" % (eta // 60, eta % 60)
            else:
                eta_text = "%ds" % eta
            info = f" \x1b[1m{eta_text}\x1b[0m"
        else:
            info = f" \x1b[1m{now - self._start:.0f}s\x1b[0m"      # time since the start
        special += 8
        info += self._format_time(time_per_unit)
        for k in self._values_order:
            avg = self._average(k)
            info += f" - {k}: {avg:.4f}" if abs(avg) > 1e-3 else f" - {k}: {avg:.4e}"
        total_width = len(bar) + len(info) - special
        # blank out what is left of a longer previous line
        pad = " " * max(self._prev_total_width - total_width, 0)
        print_msg(message + bar + info + pad + ("\n" if finalize else ""), line_break=False)
        self._prev_total_width = total_width

    def _average(self, k):
        total, count = self._values[k]
        if not isinstance(total, float):
            total = np.mean(total)
        return total / max(1, count)

    def _format_time(self, time_per_unit):
        if time_per_unit >= 1 or time_per_unit == 0:
            return f" {time_per_unit:.0f}s/{self.unit_name}"
        if time_per_unit >= 1e-3:
            return f" {time_per_unit * 1e3:.0f}ms/{self.unit_name}"
        return f" {time_per_unit * 1e6:.0f}us/{self.unit_name}"

    def _estimate_step_duration(self, current, now):
        # the first step (compilation, warm-up) is left out of the estimate once there
        # are later steps to average
        if not current:
            return 0
        if self._time_after_first_step is not None and current > 1:
            per_unit = (now - self._time_after_first_step) / (current - 1)
        else:
            per_unit = (now - self._start) / current
        if current == 1:
            self._time_after_first_step = now
        return per_unit
