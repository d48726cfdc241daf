"""Shape ops: reshape (a view), transpose / slice / pad (fused as indexed loads),
concat (its own copy kernel)."""
import numpy as np

from ..errors import ShapeError
from ..ir.registry import register
from ..ir.shapes import Sym, exact_div, hint, prod, same, unify_dims
from .rules import fmt, norm_axis, same_dtype


# --- reshape ---------------------------------------------------------------------
def _reshape_infer(shapes, dts, attrs):
    src = shapes[0]
    target = list(attrs["shape"])
    total = prod(src)
    unknown = [i for i, d in enumerate(target) if not isinstance(d, Sym) and int(d) == -1]
    if len(unknown) > 1:
        raise ShapeError(f"only one -1 is allowed in the target shape {tuple(target)}")
    for d in target:
        if not isinstance(d, Sym) and int(d) < -1:
            raise ShapeError(f"invalid target shape {tuple(target)}")
    known = prod([d for i, d in enumerate(target) if i not in unknown])
    if unknown:
        q = exact_div(total, known) if hint(known) != 0 else None
        if q is None:
            if hint(known) == 0 or hint(total) % hint(known):
                raise ShapeError(f"cannot reshape {fmt(src)} ({hint(total)} elements) into "
                                 f"{tuple(target)}")
            if isinstance(total, Sym):
                total.env.specialise(total, f"reshape to {tuple(target)} needs a fixed size")
            if isinstance(known, Sym):
                known.env.specialise(known, f"reshape to {tuple(target)} needs a fixed size")
            q = hint(total) // hint(known)
        target[unknown[0]] = q
    elif not same(total, known):
        if hint(total) != hint(known):
            raise ShapeError(f"cannot reshape {fmt(src)} ({hint(total)} elements) into "
                             f"{fmt(target)} ({hint(known)} elements)")
        unify_dims(total, known)
    out = tuple(d.norm() if isinstance(d, Sym) else int(d) for d in target)
    attrs["shape"] = out
    return out, dts[0]


register("reshape", "view", _reshape_infer,
         lambda a, at, s, d: a[0].reshape(tuple(int(x) for x in s)))


# --- transpose -------------------------------------------------------------------
def _transpose_infer(shapes, dts, attrs):
    perm = attrs["perm"]
    rank = len(shapes[0])
    if perm is None:
        perm = tuple(reversed(range(rank)))
    perm = tuple(norm_axis(int(p), rank) for p in perm)
    if sorted(perm) != list(range(rank)):
        raise ShapeError(f"perm {perm} is not a permutation of {rank} axes")
    attrs["perm"] = perm
    return tuple(shapes[0][p] for p in perm), dts[0]


register("transpose", "access", _transpose_infer,
         lambda a, at, s, d: np.ascontiguousarray(np.transpose(a[0], at["perm"])))


# --- slice (basic indexing) ------------------------------------------------------
# attrs["spec"]: one entry per input dim: ("range", start, step, size) or ("index", i).
# start and size may be symbolic; the frontend computed them with Python's rules.
def _slice_infer(shapes, dts, attrs):
    spec = attrs["spec"]
    if len(spec) != len(shapes[0]):
        raise ShapeError("too many indices for a tensor of shape " + fmt(shapes[0]))
    for k, (e, d) in enumerate(zip(spec, shapes[0])):
        _check_in_bounds(e, d, k, shapes[0])
    out = [e[3] for e in spec if e[0] == "range"]
    return tuple(out), dts[0]


def _check_in_bounds(entry, dim, k, shape):
    """Every element a slice entry reads lies inside `dim`. Comparisons with a symbolic
    size become guards, so a later call with a smaller input traces again (and raises
    here with its sizes) instead of letting compiled code read past the buffer."""
    if entry[0] == "index":
        first = last = entry[1]
        what = f"index {first}"
    else:
        start, step, size = entry[1], entry[2], entry[3]
        if size < 0:
            raise ShapeError(f"negative slice size {size} along dimension {k} of {fmt(shape)}")
        if size == 0:
            return
        first, last = start, start + step * (size - 1)
        what = f"elements {first}..{last}"
    if not (0 <= first < dim and 0 <= last < dim):
        raise ShapeError(f"{what} out of range for dimension {k} of size {dim} in {fmt(shape)}")


def _slice_ref(a, attrs, shape, dtype):
    x = a[0]
    idx = []
    for e in attrs["spec"]:
        if e[0] == "index":
            idx.append(int(e[1]))
        else:
            start, step, size = int(e[1]), int(e[2]), int(e[3])
            stop = start + step * size
            idx.append(slice(start, stop if stop >= 0 else None, step))
    return np.array(x[tuple(idx)], copy=True)      # (ascontiguousarray would make 0-d 1-d)


register("slice", "access", _slice_infer, _slice_ref)


# --- pad -------------------------------------------------------------------------
def _pad_infer(shapes, dts, attrs):
    pads = attrs["paddings"]
    if len(pads) != len(shapes[0]):
        raise ShapeError(f"paddings {pads} must have one (before, after) pair per dim of "
                         f"{fmt(shapes[0])}")
    if any(int(p) < 0 for pr in pads for p in pr):
        raise ShapeError(f"paddings must be non-negative, got {pads}")
    return tuple(d + int(lo) + int(hi) for d, (lo, hi) in zip(shapes[0], pads)), dts[0]


register("pad", "access", _pad_infer,
         lambda a, at, s, d: np.pad(a[0], [(int(l), int(h)) for l, h in at["paddings"]],
                                    constant_values=at["constant"]))


# --- concat ----------------------------------------------------------------------
def _concat_infer(shapes, dts, attrs):
    dt = same_dtype(dts)
    rank = len(shapes[0])
    if rank == 0:
        raise ShapeError("cannot concatenate 0-d tensors (use stack)")
    ax = norm_axis(attrs["axis"], rank)
    attrs["axis"] = ax
    total = 0
    out = list(shapes[0])
    for s in shapes:
        if len(s) != rank:
            raise ShapeError("all inputs must have the same rank: " + ", ".join(fmt(x) for x in shapes))
        for i in range(rank):
            if i == ax:
                continue
            if not same(out[i], s[i]):
                if hint(out[i]) != hint(s[i]):
                    raise ShapeError(f"dimension {i} differs: " + ", ".join(fmt(x) for x in shapes))
                out[i] = unify_dims(out[i], s[i])
        total = total + s[ax]
    out[ax] = total
    return tuple(out), dt


register("concat", "opaque", _concat_infer,
         lambda a, at, s, d: np.concatenate(a, axis=at["axis"]))


def _grads():
    from .grads import api, defgrad

    defgrad("reshape", lambda ins, out, g, at: [api().reshape(g, ins[0].shape)])

    def transpose_grad(ins, out, g, at):
        perm = at["perm"]
        inv = [0] * len(perm)
        for i, p in enumerate(perm):
            inv[p] = i
        return [api().transpose(g, inv)]
    defgrad("transpose", transpose_grad)

    def slice_grad(ins, out, g, at):
        # scatter g back: per dim, undo the step (interleave zeros), then pad to size
        F = api()
        x = ins[0]
        spec = at["spec"]
        shape = []
        for e in spec:                       # put the indexed dims back as size 1
            shape.append(1 if e[0] == "index" else e[3])
        g = F.reshape(g, shape)
        for k, e in enumerate(spec):
            n = x.shape[k]
            if e[0] == "index":
                start, step, size = e[1], 1, 1
            else:
                start, step, size = e[1], e[2], e[3]
            if step < 0:                     # walk the dim forwards instead
                g = _reverse(F, g, k)
                start = start + step * (size - 1)
                step = -step
            if step > 1:
                sh = list(g.shape)
                g = F.expand_dims(g, k + 1)
                pads = [[0, 0]] * len(g.shape)
                pads[k + 1] = [0, step - 1]
                g = F.pad(g, pads)
                sh[k] = sh[k] * step
                g = F.reshape(g, sh)
                g = F.slice_axis(g, k, 0, (size - 1) * step + 1) if size else F.slice_axis(g, k, 0, 0)
                size = (size - 1) * step + 1 if size else 0
            pads = [[0, 0]] * len(g.shape)
            pads[k] = [start, n - start - size]
            g = _pad_dyn(F, g, k, start, n - start - size)
        return [g]

    def _reverse(F, g, k):
        spec = []
        for i, d in enumerate(g.shape):
            spec.append(("range", d - 1, -1, d) if i == k else ("range", 0, 1, d))
        from .grads import apply_op
        return apply_op("slice", [g], {"spec": tuple(spec)})

    def _pad_dyn(F, g, k, lo, hi):
        from .grads import apply_op
        from ..ir.shapes import Sym
        if isinstance(lo, Sym) or isinstance(hi, Sym):
            # symbolic padding: concatenate zero blocks instead
            parts = []
            for amount in (lo, None, hi):
                if amount is None:
                    parts.append(g)
                elif not (not isinstance(amount, Sym) and int(amount) == 0):
                    shape = list(g.shape)
                    shape[k] = amount
                    parts.append(F.zeros(shape, g.dtype))
            return F.concat(parts, k) if len(parts) > 1 else parts[0]
        pads = [(0, 0)] * len(g.shape)
        pads[k] = (int(lo), int(hi))
        if int(lo) == 0 and int(hi) == 0:
            return g
        return apply_op("pad", [g], {"paddings": tuple(pads), "constant": 0.0 if g.dtype.is_floating else 0})

    defgrad("slice", slice_grad)

    def pad_grad(ins, out, g, at):
        spec = tuple(("range", int(lo), 1, d) for (lo, hi), d in zip(at["paddings"], ins[0].shape))
        from .grads import apply_op
        return [apply_op("slice", [g], {"spec": spec})]
    defgrad("pad", pad_grad)

    def concat_grad(ins, out, g, at):
        F = api()
        ax = at["axis"]
        res, off = [], 0
        for x in ins:
            res.append(F.slice_axis(g, ax, off, x.shape[ax]))
            off = off + x.shape[ax]
        return res
    defgrad("concat", concat_grad)


_grads()
