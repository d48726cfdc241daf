"""Parallel loop kernels on flowjit's thread pool (scheduler.py).

A big loop kernel is split into row blocks, each described by one int64 record (block
rows, sizes, array addresses and shapes), and run by a Numba `cfunc` per kernel on the
help-first pool, which also runs the blocks of big GEMMs (blas.py): one pool for
everything, as PyTorch has with OpenMP. How many blocks a loop gets depends on its size
and the pool's size only, never on how many threads help at the moment, so the result
is the same to the bit however the blocks were shared out (a reduction over the split
loop writes one partial result per block and adds them in block order).

Code generation asks `available()`; without the pool (no pthreads) kernels keep Numba's
`prange`. Compiled code reaches the pool through symbols registered with LLVM by name
(`flowjit_pool_run`, `flowjit_pool_size`), and a kernel's task through
`flowjit_task_<kernel>`: addresses change from process to process, names do not, so
kernels stay in Numba's disk cache.
"""
import ctypes
import functools
import types as pytypes

import llvmlite.binding as ll
import llvmlite.ir as lir
import numpy as np
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic
from numba.core.imputils import impl_ret_borrowed
from numba.np.arrayobj import populate_array

from . import scheduler

RUN_SYMBOL = scheduler.RUN_SYMBOL      # int run(int n, void (*)(int64*), int64*, int stride)
SIZE_SYMBOL = scheduler.SIZE_SYMBOL    # int64 size(void)
# a loop gets up to this many blocks per pool thread: more blocks share out better when
# a thread joins late, each costs a record and (for a reduction) a partial result
BLOCKS_PER_THREAD = 4

_keep = []          # objects whose addresses LLVM holds
state = {"available": None}


def available():
    """Whether loop kernels can run on flowjit's pool in this process."""
    if state["available"] is None:
        state["available"] = scheduler.start()
    return state["available"]


def register_task(name, cfunc_obj):
    """Make `flowjit_task_<name>` resolve to this process's compiled task (called when a
    generated module is imported, before its kernel is compiled or loaded). The pool's
    own symbols are registered first: a kernel loaded from Numba's disk cache links
    against them by name, and an unresolved name would be a null call."""
    if not available():
        raise RuntimeError(f"flowjit: kernel {name} was generated for flowjit's thread pool, "
                           f"which this process cannot use ({scheduler.state['why']}); delete "
                           "the flowjit cache directory to regenerate it")
    ll.add_symbol("flowjit_task_" + name, cfunc_obj.address)
    _keep.append(cfunc_obj)


# ---- intrinsics used by generated kernels ------------------------------------------
def _extern(builder, name, ret, args):
    fnty = lir.FunctionType(ret, args)
    return cgutils.get_or_insert_function(builder.module, fnty, name)


@intrinsic
def pool_size(typingctx):
    """How many threads the pool has (1 where there is none)."""
    def codegen(context, builder, sig, args):
        fn = _extern(builder, SIZE_SYMBOL, lir.IntType(64), [])
        return builder.call(fn, [])
    return types.int64(), codegen


@intrinsic
def block_count(typingctx, rows):
    """The blocks a loop over `rows` outer iterations is cut into (1: run it whole):
    max(min(rows, pool size * BLOCKS_PER_THREAD), 1). An intrinsic, not a jitted
    function: a cold process compiled that separately (0.08 s) and then, typing a
    launcher's call of it, spent as much again inside the launcher's compile."""
    if not isinstance(rows, types.Integer):
        raise TypingError(f"block_count: an integer row count expected, got {rows}")

    def codegen(context, builder, sig, args):
        i64 = lir.IntType(64)
        n = context.cast(builder, args[0], sig.args[0], types.int64)
        cap = builder.mul(builder.call(_extern(builder, SIZE_SYMBOL, i64, []), []),
                          lir.Constant(i64, BLOCKS_PER_THREAD))
        smaller = builder.select(builder.icmp_signed("<", n, cap), n, cap)
        one = lir.Constant(i64, 1)
        return builder.select(builder.icmp_signed(">", smaller, one), smaller, one)
    return types.int64(rows), codegen


def _layout_ranks(layout):
    """[(kind, dtype name, rank)] of a pool_launch layout string: kind "i" (an integer),
    "a" (an array) or "part" (a (blocks, ...) array, block t passed to record t)."""
    out = []
    for spec in layout.split(","):
        if spec == "i":
            out.append(("i", None, 0))
        else:
            kind, rest = ("part", spec[5:]) if spec.startswith("part:") else ("a", spec)
            dt, nd = rest.split(":")
            out.append((kind, dt, int(nd)))
    return out


@intrinsic
def pool_launch(typingctx, key, nt, rows, layout, args):
    """Run task `flowjit_task_<key>` on rows 0..rows cut into `nt` blocks: record t (the
    layout _unpacked reads: its rows, then each argument's value, or its address and
    shape) is built here, in LLVM IR on the stack, and the records go to the pool (one
    block runs in this thread). `layout` describes `args` ("i", "float32:2",
    "part:float32:1", comma-separated); an array must be C-contiguous of that dtype and
    rank, else this fails to compile: no task ever reads memory with the wrong layout.
    One typed call instead of a record array filled element by element, which cost
    Numba more to compile than the task's loops."""
    if not (isinstance(key, types.StringLiteral) and isinstance(layout, types.StringLiteral)):
        raise TypingError("pool_launch: the task key and the layout must be string literals")
    specs = _layout_ranks(layout.literal_value)
    if not isinstance(args, types.BaseTuple) or len(args) != len(specs):
        raise TypingError(f"pool_launch: {len(specs)} arguments expected, got {args}")
    for (kind, dt, nd), t in zip(specs, args.types):
        if kind == "i":
            ok = isinstance(t, types.Integer)
        else:
            want = nd + (kind == "part")
            ok = isinstance(t, types.Array) and t.layout == "C" and str(t.dtype) == dt and t.ndim == want
        if not ok:
            raise TypingError(f"pool_launch: argument {t} does not match layout {layout.literal_value}")
    width = 2 + sum(1 + nd if kind != "i" else 1 for kind, _, nd in specs)

    def codegen(context, builder, sig, llargs):
        _, nt_v, rows_v, _, tup = llargs
        i32, i64, i8p = lir.IntType(32), lir.IntType(64), lir.IntType(8).as_pointer()
        n = context.cast(builder, nt_v, sig.args[1], types.int64)
        total = context.cast(builder, rows_v, sig.args[2], types.int64)
        fields = []          # per argument: (value or address, shapes, block stride or None)
        for (kind, _, nd), t, v in zip(specs, sig.args[4].types, cgutils.unpack_tuple(builder, tup)):
            if kind == "i":
                fields.append((context.cast(builder, v, t, types.int64), [], None))
                continue
            arr = context.make_array(t)(context, builder, v)
            shapes = cgutils.unpack_tuple(builder, arr.shape, t.ndim)
            stride = cgutils.unpack_tuple(builder, arr.strides, t.ndim)[0] if kind == "part" else None
            fields.append((builder.ptrtoint(arr.data, i64), shapes[1:] if kind == "part" else shapes, stride))
        rec = builder.alloca(i64, size=builder.mul(n, lir.Constant(i64, width)))
        with cgutils.for_range(builder, n) as loop:
            t = loop.index
            base = builder.mul(t, lir.Constant(i64, width))

            def put(k, value):
                builder.store(value, builder.gep(rec, [builder.add(base, lir.Constant(i64, k))]))
            put(0, builder.sdiv(builder.mul(t, total), n))
            put(1, builder.sdiv(builder.mul(builder.add(t, lir.Constant(i64, 1)), total), n))
            k = 2
            for value, shapes, stride in fields:
                put(k, value if stride is None else builder.add(value, builder.mul(t, stride)))
                for j, s in enumerate(shapes):
                    put(k + 1 + j, s)
                k += 1 + len(shapes)
        task = _extern(builder, "flowjit_task_" + key.literal_value, lir.VoidType(), [i8p])
        run = _extern(builder, RUN_SYMBOL, i32, [i32, i8p, i8p, i32])
        builder.call(run, [builder.trunc(n, i32), builder.bitcast(task, i8p),
                           builder.bitcast(rec, i8p), lir.Constant(i32, width * 8)])
        return context.get_dummy_value()
    return types.none(key, nt, rows, layout, args), codegen


# the dtypes a task's arrays may have
POINTER_TYPES = {"float32": types.float32, "float64": types.float64,
                 "int32": types.int32, "int64": types.int64}


@intrinsic
def record_array(typingctx, rec, index, spec):
    """In a task: the array whose address and shape record `rec` holds from field
    `index` on (pool_launch wrote them), as a C-contiguous view owned by no one, of the
    dtype and rank `spec` names ("float32:2"). One typed call per array where
    numba.carray over a typed pointer and a shape tuple cost several."""
    if not (isinstance(spec, types.StringLiteral) and isinstance(index, types.IntegerLiteral)):
        raise TypingError("record_array: the field index and the spec must be literals")
    dt, nd = spec.literal_value.split(":")
    dtype, nd = POINTER_TYPES[dt], int(nd)
    ret = types.Array(dtype, nd, "C")
    first = index.literal_value

    def codegen(context, builder, sig, args):
        i64 = lir.IntType(64)

        def field(k):
            return builder.load(builder.gep(args[0], [lir.Constant(i64, first + k)]))
        shape = [field(1 + j) for j in range(nd)]
        itemsize = context.get_abi_sizeof(context.get_data_type(dtype))
        strides = [lir.Constant(i64, itemsize)]
        for j in range(nd - 1, 0, -1):
            strides.insert(0, builder.mul(strides[0], shape[j]))
        arr = context.make_array(ret)(context, builder)
        data = builder.inttoptr(field(0), context.get_data_type(dtype).as_pointer())
        populate_array(arr, data=data, shape=shape, strides=strides,
                       itemsize=lir.Constant(i64, itemsize), meminfo=None)
        return arr._getvalue()
    return ret(rec, index, spec), codegen


TASK_SIG = types.void(types.CPointer(types.int64))


@intrinsic
def flat_rows(typingctx, arr, rows):
    """A C-contiguous array viewed as `rows` rows of size // rows elements (a kernel
    combining its blocks' partial results). Array.reshape made Numba compile its
    reshape checks and their error path, half a second per cold process."""
    if not (isinstance(arr, types.Array) and arr.layout == "C"):
        raise TypingError(f"flat_rows: a C-contiguous array expected, got {arr}")
    ret = types.Array(arr.dtype, 2, "C")

    def codegen(context, builder, sig, args):
        i64 = lir.IntType(64)
        src = context.make_array(sig.args[0])(context, builder, args[0])
        n = context.cast(builder, args[1], sig.args[1], types.int64)
        size = lir.Constant(i64, 1)
        for d in cgutils.unpack_tuple(builder, src.shape, arr.ndim):
            size = builder.mul(size, d)
        cols = builder.sdiv(size, builder.select(builder.icmp_signed(">", n, lir.Constant(i64, 0)),
                                                 n, lir.Constant(i64, 1)))
        itemsize = context.get_abi_sizeof(context.get_data_type(arr.dtype))
        out = context.make_array(ret)(context, builder)
        populate_array(out, data=src.data, shape=[n, cols],
                       strides=[builder.mul(cols, lir.Constant(i64, itemsize)), lir.Constant(i64, itemsize)],
                       itemsize=lir.Constant(i64, itemsize), meminfo=src.meminfo, parent=src.parent)
        return impl_ret_borrowed(context, builder, ret, out._getvalue())
    return ret(arr, rows), codegen


def _combine_sum_ir(wide):
    """The intrinsic combine_sum (wide: combine_sum_wide)."""
    def typer(typingctx, out, parts, nt):
        if not (isinstance(out, types.Array) and isinstance(parts, types.Array) and out.layout == "C"
                and parts.layout == "C" and parts.ndim == out.ndim + 1 and parts.dtype == out.dtype
                and isinstance(nt, types.Integer) and (out.dtype == types.float32 or not wide)
                and isinstance(out.dtype, (types.Float, types.Integer))):
            raise TypingError(f"combine_sum: C-contiguous out and (blocks, *out.shape) partials of one "
                              f"dtype expected, got {out}, {parts}")
        is_float = isinstance(out.dtype, types.Float)

        def codegen(context, builder, sig, args):
            o = context.make_array(sig.args[0])(context, builder, args[0])
            p = context.make_array(sig.args[1])(context, builder, args[1])
            n = o.nitems
            blocks = context.cast(builder, args[2], sig.args[2], types.int64)
            elt = context.get_data_type(out.dtype)
            acc_t = lir.DoubleType() if wide else elt
            acc = cgutils.alloca_once(builder, acc_t)

            def load(index):
                v = builder.load(builder.gep(p.data, [index]))
                return builder.fpext(v, acc_t) if wide else v
            with cgutils.for_range(builder, n) as e:
                builder.store(load(e.index), acc)
                with cgutils.for_range(builder, builder.sub(blocks, lir.Constant(blocks.type, 1))) as t:
                    row = builder.add(t.index, lir.Constant(blocks.type, 1))
                    v = load(builder.add(builder.mul(row, n), e.index))
                    a = builder.load(acc)
                    builder.store(builder.fadd(a, v) if is_float else builder.add(a, v), acc)
                total = builder.load(acc)
                builder.store(builder.fptrunc(total, elt) if wide else total, builder.gep(o.data, [e.index]))
            return context.get_dummy_value()
        return types.none(out, parts, nt), codegen
    return intrinsic(typer)


# A sum's blocks' partial results (blocks, *out.shape), added into out in block order;
# wide: float32 partials added in float64. LLVM IR in the launcher rather than a loop
# Numba compiles, with a NumPy twin for a launcher run from Python (python_launcher):
# the same additions in the same order, so the same bits.
combine_sum = _combine_sum_ir(False)
combine_sum_wide = _combine_sum_ir(True)


def _combine_sum_py(out, parts, nt, wide=False):
    rows = parts.reshape(int(nt), -1)
    acc = rows[0].astype(np.float64 if wide else rows.dtype)
    for t in range(1, int(nt)):
        acc += rows[t]
    out.reshape(-1)[:] = acc


# ---- source helpers for generated modules ------------------------------------------
# A record is [first row, end row, then per parameter: its value (an integer) or its
# address and shape (an array, `arrays[name] = (dtype name, rank)`)], built by pool_launch. A task must not
# allocate or raise: Numba reports a cfunc's exception by taking the GIL, which the
# caller holds while it waits for the task.
def launch_line(key, rows, params, arrays, ind, parts=None):
    """The kernel line running task `key` on rows 0..`rows` in `nt` blocks (pool_launch);
    parts: {parameter: the (blocks, ...) array whose block t record t gets instead}."""
    parts = parts or {}
    layout = ",".join(("part:" if p in parts else "") + "{}:{}".format(*arrays[p]) if p in arrays
                      else "i" for p in params)
    args = "".join(f"{parts.get(p, p)}, " for p in params)
    return f"{ind}pool_launch('{key}', nt, {rows}, '{layout}', ({args}))"


def _unpacked(params, arrays, rec):
    """(parameter, the expression reading it from record `rec`) per parameter."""
    out, k = [], 2
    for p in params:
        if p in arrays:
            dt, nd = arrays[p]
            out.append((p, f"record_array({rec}, {k}, '{dt}:{nd}')"))
            k += 1 + nd
        else:
            out.append((p, f"{rec}[{k}]"))
            k += 1
    return out


def task_source(key, task_name, params, arrays, loop_lines, fastmath):
    """A C-callable task `task_name` that runs `loop_lines` (at one indent; they read the
    parameters by name and the rows row_lo..row_hi) on one record, registered under
    `key`. The loops are written into the task itself rather than called there: a
    separate rows function was compiled once alone and once more inside each caller,
    and cost a pooled kernel a third of its compile time."""
    lines = [f"@cfunc(TASK_SIG, cache=CACHE, error_model='numpy', fastmath={fastmath})",
             f"def {task_name}(_rec):", "    row_lo = _rec[0]", "    row_hi = _rec[1]"]
    lines += [f"    {p} = {e}" for p, e in _unpacked(params, arrays, "_rec")]
    return "\n".join(lines + loop_lines) + f"\n\n\nregister_task('{key}', {task_name})\n"


def run_source(key, run_name, params, arrays):
    """`run_name(total, *params)`: rows 0..total of task `key` split into
    block_count(total) contiguous blocks on the pool (one block, run in the caller's
    thread, when that is 1)."""
    return "\n".join([
        "@njit(cache=CACHE, error_model='numpy', no_cfunc_wrapper=True)",
        f"def {run_name}(total, {', '.join(params)}):",
        "    nt = block_count(total)",
        launch_line(key, "total", params, arrays, "    ")]) + "\n"


# ---- launching a task from the Python tier -------------------------------------------
# A pooled kernel's launcher is an njit function taking every array; on a cold cache it
# cost 0.13-0.40 s to compile (its typing, lowering and Python wrapper: a quarter), as
# much as half its task, for the few calls the Python tier makes before the loops or the
# entry are compiled (which compile it anyway, as their callee). So the Python tier's
# first calls run the launcher's own code in the interpreter, with Python versions of
# block_count and pool_launch: the same blocks, the same records, the same task, the
# same bits. A call costs ~25 us there against ~2 us compiled, so the backend binds the
# compiled launcher once it is (backend.py).
def python_launchable(name, src):
    """Whether kernel `name`, module text `src`, has a launcher that also runs as plain
    Python: a pooled loop kernel (codegen: task `<name>_task` under the key its name
    holds) that combines no block partials in an element loop (a max, a min, a
    product: slow in the interpreter; sums go through combine_sum)."""
    return f"pool_launch('{name[2:]}', " in src and "flat_rows(" not in src


def python_launcher(mod, name):
    """Kernel `name` of the loaded module `mod` as a Python function running its
    launcher's code (python_launchable)."""
    task = getattr(mod, name + "_task")
    code = getattr(mod, name).py_func.__code__
    env = dict(vars(mod), block_count=_block_count_py,
               pool_launch=lambda key, nt, rows, layout, args: launch_from_python(
                   task.address, nt, rows, layout, args, name),
               combine_sum=_combine_sum_py,
               combine_sum_wide=lambda out, parts, nt: _combine_sum_py(out, parts, nt, True))
    return pytypes.FunctionType(code, env, name)


def _block_count_py(rows):
    """block_count, in Python."""
    return max(min(int(rows), scheduler.size() * BLOCKS_PER_THREAD), 1)


_layout = functools.lru_cache(maxsize=None)(_layout_ranks)


@functools.cache
def _run_from_python():
    scheduler.start()
    # PYFUNCTYPE: the call keeps the GIL, as the compiled launcher does
    return ctypes.PYFUNCTYPE(ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p,
                             ctypes.c_int32)(scheduler.state["run"])


def launch_from_python(task_address, nt, rows, layout, args, name="a task"):
    """pool_launch in Python: records of rows 0..rows cut into `nt` blocks, as
    pool_launch builds them, run by the pool. Arrays are checked against the layout
    first (the compiled launcher's typing did that): a task reads memory blindly."""
    specs = _layout(layout)
    if len(args) != len(specs):
        raise TypeError(f"flowjit: kernel {name} takes {len(specs)} arguments, got {len(args)}")
    nt = int(nt)
    vals, parts = [], []         # parts: (record column, block stride in bytes)
    for (kind, dt, nd), a in zip(specs, args):
        if kind == "i":
            vals.append(int(a))
            continue
        rank = nd + (kind == "part")
        if not (type(a) is np.ndarray and a.dtype.name == dt and a.ndim == rank and a.flags.c_contiguous
                and (kind != "part" or a.shape[0] == nt)):
            raise TypeError(f"flowjit: kernel {name} takes a C-contiguous {dt} array of rank {rank}"
                            f"{f' with {nt} blocks' if kind == 'part' else ''}, got "
                            f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}")
        if kind == "part":
            parts.append((2 + len(vals), a.strides[0]))
        vals.append(a.__array_interface__["data"][0])
        vals.extend(a.shape[1:] if kind == "part" else a.shape)
    rec = np.empty((nt, 2 + len(vals)), np.int64)
    rec[:, 2:] = vals
    blocks = np.arange(nt + 1, dtype=np.int64)
    bounds = blocks * int(rows) // nt
    rec[:, 0] = bounds[:-1]
    rec[:, 1] = bounds[1:]
    for column, stride in parts:         # block t writes its own partial results
        rec[:, column] += blocks[:-1] * stride
    _run_from_python()(nt, task_address, rec.ctypes.data, rec.strides[0])
