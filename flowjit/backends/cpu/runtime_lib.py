"""Helpers the generated entry functions call (compiled once, cached on disk)."""
import ctypes
import functools
import glob
import os

import llvmlite.binding as ll
import numpy as np
import llvmlite.ir as lir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload


from ... import runtime_config as cfg
from . import gemm_ir, packed_ir
from .blas import gemm_call, start as _start_blas
from .narrow_ir import NOT_HERE
from .packed import narrow_call, pack_call, pack_pgemm_call, panel_call, pgemm_call

_start_blas()      # the symbols the GEMMs below link against, before they compile or load
# (the packed products' symbols are registered by loader.start_packed_for, only in
# processes whose code calls them: compiling them costs 0.2-0.27 s on a cold cache)


GEMM_SHAPES = "matmul: operand shapes do not match the output, or a size is 2**31 or more: a, b, out " \
    "shapes (transposes aside)"
GEMM_MEMORY = "matmul: no memory for contiguous copies of strided operands"
PACK_PGEMM_SHAPES = "matmul: operand shapes do not match the output: a, weight (transposed where asked), " \
    "scratch (panels, rows, panel width), out, addend, bias shapes"
PGEMM_SHAPES = "matmul: operand shapes do not match the output: a, packed weight (panels, rows, panel " \
    "width), out, addend, bias shapes"


# 2-D float matmuls: big ones in blocks on the pool, small ones one single-threaded
# BLAS call, operands BLAS cannot read in place copied first. All of that is LLVM IR
# built once per process (gemm_ir.py), so an entry's GEMM costs Numba one small
# function per array types, not the 1.1-1.8 s the same logic cost as Numba code.
@njit(cache=True, error_model="numpy")
def gemm(a, b, out, ta, tb, acc):
    """out = op(a) @ op(b), or out += ... with `acc` (a loop accumulating a weight's
    gradient over its steps), op transposing where ta / tb. One compiled function per
    array types serves all eight flag combinations: compiled code passes the flags as
    np.bool_ values, since a literal True would compile it once more."""
    status = gemm_call(a, b, out, ta, tb, acc)
    if status == 1:
        # (Numba passes run-time values as the exception's further arguments)
        raise ValueError(GEMM_SHAPES, a.shape, b.shape, out.shape)
    if status != 0:
        raise MemoryError(GEMM_MEMORY)


@njit(cache=True, error_model="numpy")
def ngemm(a, b, out, ta, tb, acc):
    """gemm for float32 products with few output columns: a weight gradient x^T @ dz
    through flowjit_narrow (narrow_ir.py), what that does not take through gemm."""
    status = narrow_call(a, b, out, ta, tb, acc)
    if status == NOT_HERE:
        status = gemm_call(a, b, out, ta, tb, acc)
    if status == 1:
        raise ValueError(GEMM_SHAPES, a.shape, b.shape, out.shape)
    if status != 0:
        raise MemoryError(GEMM_MEMORY)


# a loop's product with a weight that does not change between its steps: the weight
# packed once before the loop, each step's product on the packed copy (packed_ir.py)
@njit(cache=True, error_model="numpy")
def pack_weight(w, transposed):
    """op(w) (w.T where transposed) packed for pgemm: (panels, rows of op(w), panel width)."""
    k, n = (w.shape[1], w.shape[0]) if transposed else (w.shape[0], w.shape[1])
    panel = panel_call()
    out = np.empty(((n + panel - 1) // panel, k, panel), np.float32)
    pack_call(w, transposed, out)
    return out


@njit(cache=True, error_model="numpy")
def pgemm(a, packed, out, addend, bias, acc):
    """out = a @ W, plus addend with `acc` (addend may be out: out += a @ W), plus the row
    `bias` unless it is empty (NO_BIAS), for W packed by pack_weight."""
    if pgemm_call(a, packed, out, addend, bias, acc) != 0:
        raise ValueError(PGEMM_SHAPES, a.shape, packed.shape, out.shape, addend.shape, bias.shape)


@njit(cache=True, error_model="numpy")
def pack_pgemm(a, w, transposed, scratch, out, addend, bias, acc):
    """pgemm(a, pack_weight(w, transposed), out, addend, bias, acc), the same bits, with
    the packing shared out: each block of the product packs its own panels of the weight
    into `scratch` (shaped as pack_weight's result; the caller's, so that a step reuses
    it rather than page-faulting a fresh one) before it multiplies by them. For a weight
    used once, such as a training step's x @ W."""
    if pack_pgemm_call(a, w, transposed, scratch, out, addend, bias, acc) != 0:
        raise ValueError(PACK_PGEMM_SHAPES, a.shape, w.shape, scratch.shape, out.shape, addend.shape,
                         bias.shape)


def _starts_packed_before_loading(dispatcher):
    """A pack_weight, pgemm or pack_pgemm read from Numba's disk cache links against the packed
    products' symbols by name, and no typing (where the intrinsics start them) happens on
    the way: a process that called one directly, without a generated module's text
    having started them (loader.start_packed_for), jumped to a null address. Starting
    them before each cache load costs nothing once they are built."""
    load = dispatcher._cache.load_overload

    def load_overload(sig, target_context):
        from .packed import start
        start()
        return load(sig, target_context)
    dispatcher._cache.load_overload = load_overload


_starts_packed_before_loading(pack_weight)
_starts_packed_before_loading(pgemm)
_starts_packed_before_loading(pack_pgemm)
_starts_packed_before_loading(ngemm)


# pgemm's bias when there is none, in direct calls (a generated loop passes an empty array
# of its own: codegen._scan_lines)
NO_BIAS = np.zeros(0, np.float32)


# fixed transposes, for the convolution kernels that call them from compiled code
@njit(cache=True, error_model="numpy")
def gemm_nn(a, b, out):
    gemm(a, b, out, np.bool_(False), np.bool_(False), np.bool_(False))


@njit(cache=True, error_model="numpy")
def gemm_tn(a, b, out):
    gemm(a, b, out, np.bool_(True), np.bool_(False), np.bool_(False))


@njit(cache=True, error_model="numpy")
def gemm_nt(a, b, out):
    gemm(a, b, out, np.bool_(False), np.bool_(True), np.bool_(False))


@njit(cache=True, error_model="numpy")
def bmm(a, b, out, ta, tb):
    """Batched float matmul over (batch, rows, cols) arrays, one GEMM per batch entry; a
    batch of 1 broadcasts."""
    nb = out.shape[0]
    for i in range(nb):
        x = a[i if a.shape[0] > 1 else 0]
        y = b[i if b.shape[0] > 1 else 0]
        gemm(x, y, out[i], np.bool_(ta), np.bool_(tb), np.bool_(False))


@njit(cache=True, error_model="numpy")
def bmm_loop(a, b, out, ta, tb):
    """Batched integer matmul (BLAS has no integer gemm)."""
    nb = out.shape[0]
    for i in range(nb):
        x = a[i if a.shape[0] > 1 else 0]
        y = b[i if b.shape[0] > 1 else 0]
        if ta:
            x = x.T
        if tb:
            y = y.T
        o = out[i]
        m, n = o.shape
        k = x.shape[1]
        for r in range(m):
            for c in range(n):
                o[r, c] = 0
            for q in range(k):
                v = x[r, q]
                for c in range(n):
                    o[r, c] += v * y[q, c]


@njit(inline="always", error_model="numpy")
def alloc(site, shape, dtype):
    """An allocation of the compiled entry (its Python tier reuses buffers per site).
    Inlined: called as a function, Numba compiled it once per call site (the site and
    the shape's constant sizes are literals), 0.06-0.27 s each, a second or more of
    an entry's compile."""
    return np.empty(shape, dtype)


def assign(dst, src, perm=None):
    """dst[...] = src, or src.transpose(perm): an entry's move (codegen._move_lines). src
    is a scalar or an array shaped like dst's last dims (broadcast along the leading
    ones). The Python tier runs this, NumPy's copy; a compiled entry runs the loop nest
    below instead, since Numba's array assignment cost about 2 s to compile in every
    process, and its transpose with a permutation 3 s (the LSTM step's forward entry
    took 9.5 s with both)."""
    dst[...] = src if perm is None else src.transpose(perm)


@overload(assign, prefer_literal=True, jit_options={"error_model": "numpy"})
def _assign_loops(dst, src, perm=None):
    n = dst.ndim
    m = src.ndim if isinstance(src, types.Array) else 0
    order = list(range(m))            # the index of src's dim k is that of dst's n - m + order[k]
    if not (perm is None or isinstance(perm, (types.NoneType, types.Omitted))):
        if not (isinstance(perm, types.BaseTuple) and len(perm) == m
                and all(isinstance(t, types.IntegerLiteral) for t in perm.types)):
            return None
        p = [t.literal_value for t in perm.types]
        if sorted(p) != order:
            return None
        for j, k in enumerate(p):
            order[k] = j
    if m > n:
        return None
    lines = ["def impl(dst, src, perm=None):"]
    for k in range(m):          # Numba checks no bounds: the shapes are checked first
        lines.append(f"    if src.shape[{k}] != dst.shape[{n - m + order[k]}]:")
        lines.append("        raise ValueError('assign: source and target shapes differ: source, target', "
                     "src.shape, dst.shape)")
    value = f"src[{', '.join(f'i{n - m + order[k]}' for k in range(m))}]" if m else "src"
    target = f"dst[{', '.join(f'i{k}' for k in range(n)) or '()'}]"
    known = dst.layout == "C" and (m == 0 or src.layout == "C")    # strides LLVM can see
    if n >= 1 and (m == 0 or order[m - 1] == m - 1) and not known:
        # rows of consecutive elements on both sides (a slice of columns, say) are
        # copied as contiguous 1-D views, which LLVM vectorises (four 64 x 256 float
        # slices took 18 us as a nest of strided scalar copies, 5-6 us so)
        test = [f"dst.strides[{n - 1}] == dst.itemsize"] + ([f"src.strides[{m - 1}] == src.itemsize"] if m else [])
        lines.append(f"    if {' and '.join(test)}:")
        for k in range(n - 1):
            lines.append(f"{'    ' * (k + 2)}for i{k} in range(dst.shape[{k}]):")
        ind = "    " * (n + 1)
        lead = [f"i{k}" for k in range(n - 1)]
        lines.append(f"{ind}d = _row(dst, ({''.join(x + ', ' for x in lead)}))")
        if m:
            lines.append(f"{ind}s = _row(src, ({''.join(f'i{n - m + order[k]}, ' for k in range(m - 1))}))")
        lines.append(f"{ind}for j in range(d.shape[0]):")
        lines.append(f"{ind}    d[j] = {'s[j]' if m else 'src'}")
        lines.append("        return")
    for k in range(n):
        lines.append(f"{'    ' * (k + 1)}for i{k} in range(dst.shape[{k}]):")
    lines.append(f"{'    ' * (n + 1)}{target} = {value}")
    ns = {"_row": _row}
    exec("\n".join(lines), ns)
    return ns["impl"]


@intrinsic
def _row(typingctx, arr, lead):
    """The last dim of `arr` at leading indices `lead` (a tuple of all the others) as a
    C-contiguous 1-D view: the caller has checked that its elements are consecutive."""
    if not (isinstance(arr, types.Array) and isinstance(lead, types.BaseTuple)
            and len(lead) == arr.ndim - 1):
        return None
    row = types.Array(arr.dtype, 1, "C")

    def codegen(context, builder, sig, args):
        from numba.core.imputils import impl_ret_borrowed
        from numba.np.arrayobj import make_array, populate_array
        a = make_array(sig.args[0])(context, builder, args[0])
        idx = cgutils.unpack_tuple(builder, args[1], len(sig.args[1]))
        strides = cgutils.unpack_tuple(builder, a.strides, arr.ndim)
        shape = cgutils.unpack_tuple(builder, a.shape, arr.ndim)
        offset = context.get_constant(types.intp, 0)
        for i, t, st in zip(idx, sig.args[1], strides):
            offset = builder.add(offset, builder.mul(context.cast(builder, i, t, types.intp), st))
        data = builder.bitcast(builder.gep(builder.bitcast(a.data, lir.IntType(8).as_pointer()), [offset]),
                               a.data.type)
        out = make_array(row)(context, builder)
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(context.get_data_type(arr.dtype)))
        populate_array(out, data=data, shape=cgutils.pack_array(builder, [shape[-1]]),
                       strides=cgutils.pack_array(builder, [itemsize]), itemsize=itemsize,
                       meminfo=a.meminfo, parent=a.parent)
        # a view: a new reference to arr's memory
        return impl_ret_borrowed(context, builder, row, out._getvalue())
    return row(arr, lead), codegen


# ---- gemm, pack_weight and pgemm for the Python tier's first calls --------------------
# Each cost a cold process 0.1-0.4 s to compile, and each only checks its operands and
# calls an LLVM function compiled once per process (gemm_ir.py, packed_ir.py). So the
# Python tier's first calls make those calls through ctypes (the same functions, so the
# same bits); the compiled helpers come with the later compile, as the pooled kernels'
# launchers do (pool.python_launcher, backend.py). A call costs a few microseconds more.
def _function(name, restype, *argtypes):
    # PYFUNCTYPE: the call keeps the GIL, as the compiled helpers do
    return ctypes.PYFUNCTYPE(restype, *argtypes)(ll.address_of_symbol(name))


_I64, _PTR = ctypes.c_int64, ctypes.c_void_p


@functools.cache
def _gemm_function():
    _start_blas()
    return _function(gemm_ir.NAME, ctypes.c_int32, *([_PTR] + [_I64] * 4) * 3, *[_I64] * 4)


@functools.cache
def _packed_functions():
    from .packed import start, state
    if not start():
        raise RuntimeError(f"flowjit: {state['why']}")
    return (_function(packed_ir.PACK_NAME, None, _PTR, *[_I64] * 5, _PTR, _I64),
            _function(packed_ir.GEMM_NAME, ctypes.c_int32, _PTR, *[_I64] * 4, _PTR, *[_I64] * 3,
                      *([_PTR] + [_I64] * 4) * 2, _PTR, _I64, _I64),
            _function(packed_ir.PANEL_NAME, _I64),
            _function(packed_ir.PACKING_NAME, ctypes.c_int32, _PTR, *[_I64] * 4, _PTR, *[_I64] * 5, _PTR,
                      *[_I64] * 3, *([_PTR] + [_I64] * 4) * 2, _PTR, _I64, _I64))


def _operand(helper, a, ndim, dtypes, contiguous=False):
    """The checks the compiled helper's typing makes: an ndarray of that rank and dtype
    (and C-contiguous where asked), strides in whole elements."""
    if not (type(a) is np.ndarray and a.ndim == ndim and a.dtype in dtypes
            and all(st % a.itemsize == 0 for st in a.strides) and (a.flags.c_contiguous or not contiguous)):
        raise TypeError(f"flowjit: {helper} takes {'C-contiguous ' if contiguous else ''}{ndim}-D "
                        f"{' or '.join(map(str, dtypes))} arrays, got {getattr(a, 'dtype', type(a).__name__)} "
                        f"{getattr(a, 'shape', '')}")


def _in_elements(a):
    return [a.ctypes.data, *a.shape, *(st // a.itemsize for st in a.strides)]


_FLOATS, _FLOAT32 = (np.dtype(np.float32), np.dtype(np.float64)), (np.dtype(np.float32),)


def gemm_py(a, b, out, ta, tb, acc):
    """gemm, from Python."""
    for x in (a, b, out):
        _operand("gemm", x, 2, (out.dtype,) if out.dtype in _FLOATS else _FLOATS)
    args = []
    for x in (a, b, out):
        args += [x.ctypes.data, *x.shape, *x.strides]
    status = _gemm_function()(*args, out.itemsize, int(ta), int(tb), int(acc))
    if status == 1:
        raise ValueError(GEMM_SHAPES, a.shape, b.shape, out.shape)
    if status != 0:
        raise MemoryError(GEMM_MEMORY)


def pack_weight_py(w, transposed):
    """pack_weight, from Python."""
    pack, _, panel_width, _ = _packed_functions()
    _operand("pack_weight", w, 2, _FLOAT32)
    k, n = (w.shape[1], w.shape[0]) if transposed else w.shape
    panel = panel_width()
    out = np.empty(((n + panel - 1) // panel, k, panel), np.float32)
    pack(*_in_elements(w), int(transposed), out.ctypes.data, out.shape[0])
    return out


def pgemm_py(a, packed, out, addend, bias, acc):
    """pgemm, from Python."""
    _, product, _, _ = _packed_functions()
    for x, nd in ((a, 2), (out, 2), (addend, 2)):
        _operand("pgemm", x, nd, _FLOAT32)
    _operand("pgemm", packed, 3, _FLOAT32, contiguous=True)
    _operand("pgemm", bias, 1, _FLOAT32, contiguous=True)
    if product(*_in_elements(a), packed.ctypes.data, *packed.shape, *_in_elements(out), *_in_elements(addend),
               bias.ctypes.data, bias.shape[0], int(acc)) != 0:
        raise ValueError(PGEMM_SHAPES, a.shape, packed.shape, out.shape, addend.shape, bias.shape)


def pack_pgemm_py(a, w, transposed, scratch, out, addend, bias, acc):
    """pack_pgemm, from Python."""
    product = _packed_functions()[3]
    for x in (a, w, out, addend):
        _operand("pack_pgemm", x, 2, _FLOAT32)
    _operand("pack_pgemm", scratch, 3, _FLOAT32, contiguous=True)
    _operand("pack_pgemm", bias, 1, _FLOAT32, contiguous=True)
    if product(*_in_elements(a), *_in_elements(w), int(transposed), scratch.ctypes.data, *scratch.shape,
               *_in_elements(out), *_in_elements(addend), bias.ctypes.data, bias.shape[0], int(acc)) != 0:
        raise ValueError(PACK_PGEMM_SHAPES, a.shape, w.shape, scratch.shape, out.shape, addend.shape,
                         bias.shape)


PYTHON_TWINS = {"gemm": gemm_py, "pack_weight": pack_weight_py, "pgemm": pgemm_py, "pack_pgemm": pack_pgemm_py}


def compiled_at_hand(name):
    """Whether helper `name` is compiled in this process or in the disk cache."""
    from .helper_cache import helper_dir
    return bool(globals()[name].overloads) or (cfg.disk_cache_enabled() and bool(
        glob.glob(os.path.join(glob.escape(helper_dir(__file__)), f"runtime_lib.{name}-*.nbi"))))
