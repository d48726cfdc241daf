"""Host ops: `print` (`fj.print`, TF1's `tf.Print`), run for its side effect.

The op's inputs are an ordering token (the previous print's output in the same trace,
or a constant 0) and the tensors to print; its one attribute, `site`, names a
`PrintSite` of this process's table (`SITES`), which holds everything that is not a
tensor: the text and Python values around the tensors, the stream, the separators,
TF1's `first_n`/`summarize`. The output is a dummy int32 scalar (the next print's
token), so prints run in the order the program made them.

Where it runs:
- eagerly, the frontend formats and prints at once (no site is kept);
- under `@fj.jit`, the trace lists the node in `Graph.keep` (nothing reads it, the
  passes keep it for its effect; the `effect` trait keeps it from being folded or
  merged). Tier 0 and a GPU program (which runs ops without a CUDA kernel on host
  copies) call the reference below; compiled CPU code calls `host_print` from its
  kernel through Numba's object mode (backends/cpu/lowerings.py), so the values are
  printed while the step runs, in step order. A background-compile child process
  has no sites and prints nothing (host_print ignores a site it does not know).
"""
import sys
import threading

import numpy as np

from .. import dtypes as D
from ..ir.registry import register

SITES = []
_lock = threading.Lock()


class PrintSite:
    """What one print call prints besides its tensors.

    parts: the printed items; each is ("slot", k) (the k-th tensor input), ("text",
    str), or ("struct", a nested list/tuple/dict whose leaves are `Slot`s or Python
    values). style "tf2" (fj.print: items joined by `sep`, then `end`, numpy-like
    tensors with `summarize` entries at each end of a long dim) or "tf1" (tf.Print:
    the message, then each tensor in brackets, its first `summarize` values).
    stream: a file object, None for sys.stderr at print time, or "file://path"."""

    def __init__(self, parts, ranks, stream=None, sep=" ", end="\n", summarize=3, style="tf2",
                 first_n=None, counter=None):
        self.parts = parts
        self.ranks = tuple(ranks)
        self.stream = stream
        self.sep, self.end = sep, end
        self.summarize = summarize
        self.style = style
        self.first_n = first_n
        self.counter = counter if counter is not None else [0]

    def text(self, arrays):
        arrays = [np.asarray(a).reshape(()) if r == 0 else np.asarray(a)
                  for a, r in zip(arrays, self.ranks)]
        if self.style == "tf1":
            return self.parts[0][1] + "".join("[" + summarize_v1(a, self.summarize) + "]"
                                              for a in arrays) + "\n"
        items = [_item(p, arrays, self.summarize) for p in self.parts]
        return self.sep.join(items) + self.end

    def emit(self, arrays):
        if self.first_n is not None and self.first_n >= 0:
            if self.counter[0] >= self.first_n:
                return
            self.counter[0] += 1
        text = self.text(arrays)
        write(self.stream, text)


def write(stream, text):
    if stream is None:
        stream = sys.stderr
    if isinstance(stream, str):
        path = stream[len("file://"):] if stream.startswith("file://") else stream
        with open(path, "a") as f:
            f.write(text)
        return
    stream.write(text)
    flush = getattr(stream, "flush", None)
    if flush is not None:
        flush()


def new_site(site):
    """Register `site`; its number is the print op's attribute."""
    with _lock:
        SITES.append(site)
        return len(SITES) - 1


def host_print(site, *arrays):
    """What compiled code calls (in Numba's object mode): print site `site`'s tensors
    (arrays[0] is the ordering token)."""
    if 0 <= site < len(SITES):
        SITES[site].emit(arrays[1:])


# --------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------
def _scalar(v):
    """One value: the shortest text that reads back as it, an integral float without
    its ".0" (TF prints 1.0 as 1)."""
    if isinstance(v, (np.bool_, bool)):
        return "True" if v else "False"
    text = str(v)
    if isinstance(v, (np.floating, float)) and text.endswith(".0"):
        text = text[:-2]
    return text


def format_tensor(a, summarize=3):
    """A tensor as tf.print writes it: `[1 2 3]`, rows of a matrix on their own lines,
    long dims shortened to `summarize` entries at each end around `...` (None or a
    negative value: every entry)."""
    a = np.asarray(a)
    if a.ndim == 0:
        return _scalar(a[()])
    lim = None if summarize is None or summarize < 0 else int(summarize)

    def rows(x, depth):
        n = x.shape[0]
        idx = list(range(n))
        cut = lim is not None and n > 2 * lim
        if cut:
            idx = list(range(lim)) + [None] + list(range(n - lim, n))
        if x.ndim == 1:
            return "[" + " ".join("..." if i is None else _scalar(x[i]) for i in idx) + "]"
        sep = "\n" * (x.ndim - 1) + " " * (depth + 1)
        return "[" + sep.join("..." if i is None else rows(x[i], depth + 1) for i in idx) + "]"
    return rows(a, 0)


def summarize_v1(a, limit=None):
    """TF1's Tensor::SummarizeValue (what tf.Print writes inside each pair of brackets):
    the first `limit` values (3 when None) in row-major order, nested brackets for the
    inner dims, "..." where it stopped."""
    a = np.asarray(a)
    limit = 3 if limit is None else int(limit)
    if limit < 0:
        limit = a.size
    if a.ndim == 0:
        return _scalar(a[()])
    flat = a.reshape(-1)
    shape = a.shape
    out = []
    pos = [0]

    def dim(k):
        if pos[0] >= limit:
            return
        n = shape[k]
        if k == len(shape) - 1:
            for i in range(n):
                if pos[0] >= limit:
                    if k != 0:
                        out.append("...")
                    return
                if i > 0:
                    out.append(" ")
                out.append(_scalar(flat[pos[0]]))
                pos[0] += 1
            return
        for i in range(n):
            opened = False
            if pos[0] < limit:
                out.append("[")
                opened = True
            dim(k + 1)
            if pos[0] < limit or opened:
                out.append("]")
    dim(0)
    text = "".join(out)
    if a.size > limit:
        text += "..."
    return text


def _item(part, arrays, summarize):
    kind, v = part
    if kind == "slot":
        return format_tensor(arrays[v], summarize)
    if kind == "text":
        return v
    return _struct(v, arrays, summarize)


def _struct(v, arrays, summarize):
    if isinstance(v, Slot):
        return format_tensor(arrays[v.index], summarize)
    if isinstance(v, list):
        return "[" + ", ".join(_struct(x, arrays, summarize) for x in v) + "]"
    if isinstance(v, tuple):
        return "(" + ", ".join(_struct(x, arrays, summarize) for x in v) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k!r}: {_struct(x, arrays, summarize)}" for k, x in v.items()) + "}"
    return repr(v) if isinstance(v, str) else str(v)


class Slot:
    """A tensor's place inside a printed Python structure."""
    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index


# --------------------------------------------------------------------------------------
# the op
# --------------------------------------------------------------------------------------
def _infer(shapes, dts, attrs):
    return (), D.int32


def _ref(arrs, attrs, shape, dtype):
    host_print(attrs["site"], *arrs)
    return np.zeros((), np.int32)


register("print", "opaque", _infer, _ref, effect=True)


def _grads():
    from .grads import defgrad
    defgrad("print", lambda ins, out, g, at: [None] * len(ins))


_grads()
