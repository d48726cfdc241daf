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
import llvmlite.binding as ll
import llvmlite.ir as lir
from numba import njit, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

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


@njit(cache=True, error_model="numpy")
def block_count(rows):
    """The blocks a loop over `rows` outer iterations is cut into (1: run it whole)."""
    return max(min(rows, pool_size() * BLOCKS_PER_THREAD), 1)


@intrinsic
def pool_run(typingctx, ntasks, task_name, records):
    """Run task `flowjit_task_<task_name>` on rows 0..ntasks-1 of `records` (a C-contiguous
    int64 2-D array, one record per task) on the pool; returns when all are done."""
    if not isinstance(task_name, types.StringLiteral):
        raise TypingError("pool_run: the task name must be a string literal")
    if not (isinstance(records, types.Array) and records.dtype == types.int64
            and records.ndim == 2 and records.layout == "C"):
        raise TypingError("pool_run: records must be a C-contiguous int64 2-D array")

    def codegen(context, builder, sig, args):
        n, _, rec = args
        i32, i8p = lir.IntType(32), lir.IntType(8).as_pointer()
        task = _extern(builder, "flowjit_task_" + task_name.literal_value, lir.VoidType(), [i8p])
        run = _extern(builder, RUN_SYMBOL, i32, [i32, i8p, i8p, i32])
        arr = context.make_array(sig.args[2])(context, builder, rec)
        row_bytes = cgutils.unpack_tuple(builder, arr.strides, 2)[0]
        builder.call(run, [builder.trunc(n, i32), builder.bitcast(task, i8p),
                           builder.bitcast(arr.data, i8p), builder.trunc(row_bytes, i32)])
        return context.get_dummy_value()
    return types.none(ntasks, task_name, records), codegen


@intrinsic
def c_address(typingctx, arr, expect):
    """The data address of `arr`, which must be a C-contiguous array of the dtype and
    rank the code generator expected ("float32:2"): anything else fails to compile, it
    never reaches a task that would read it with the wrong layout."""
    if not isinstance(expect, types.StringLiteral):
        raise TypingError("c_address: expected type must be a string literal")
    want = expect.literal_value
    got = f"{arr.dtype}:{arr.ndim}" if isinstance(arr, types.Array) else str(arr)
    if not (isinstance(arr, types.Array) and arr.layout == "C" and got == want):
        raise TypingError(f"c_address: expected a C-contiguous {want} array, got {arr}")

    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        return builder.ptrtoint(a.data, lir.IntType(64))
    return types.int64(arr, expect), codegen


def _pointer_intrinsic(nbtype):
    @intrinsic
    def as_pointer(typingctx, addr):
        def codegen(context, builder, sig, args):
            return builder.inttoptr(args[0], context.get_value_type(types.CPointer(nbtype)))
        return types.CPointer(nbtype)(types.int64), codegen
    return as_pointer


# addresses back to typed pointers, for numba.carray in the tasks (the dtypes tasks take)
POINTER_TYPES = {"float32": types.float32, "float64": types.float64,
                 "int32": types.int32, "int64": types.int64}
ptr_float32 = _pointer_intrinsic(types.float32)
ptr_float64 = _pointer_intrinsic(types.float64)
ptr_int32 = _pointer_intrinsic(types.int32)
ptr_int64 = _pointer_intrinsic(types.int64)

TASK_SIG = types.void(types.CPointer(types.int64))


# ---- source helpers for generated modules ------------------------------------------
# A record is [first row, end row, then per parameter: its value (an integer) or its
# address and shape (an array, `arrays[name] = (dtype name, rank)`)]. A task must not
# allocate or raise: Numba reports a cfunc's exception by taking the GIL, which the
# caller holds while it waits for the task.
def record_width(params, arrays):
    return 2 + sum(1 + arrays[p][1] if p in arrays else 1 for p in params)


def record_lines(params, arrays, ind, source=None):
    """Lines filling record `rec[t]` (rows r0..r1 already in columns 0 and 1);
    source(p) names the array passed for p (default: p itself)."""
    out, k = [], 2
    for p in params:
        if p in arrays:
            dt, nd = arrays[p]
            out.append(f"{ind}rec[t, {k}] = c_address({source(p) if source else p}, '{dt}:{nd}')")
            out.extend(f"{ind}rec[t, {k + 1 + a}] = {p}.shape[{a}]" for a in range(nd))
            k += 1 + nd
        else:
            out.append(f"{ind}rec[t, {k}] = {p}")
            k += 1
    return out


def _unpacked(params, arrays, rec):
    """(parameter, the expression reading it from record `rec`) per parameter."""
    out, k = [], 2
    for p in params:
        if p in arrays:
            dt, nd = arrays[p]
            shape = "".join(f"{rec}[{k + 1 + a}], " for a in range(nd))
            out.append((p, f"carray(ptr_{dt}({rec}[{k}]), ({shape}))"))
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
    body = "\n".join([
        "@njit(cache=CACHE, error_model='numpy')",
        f"def {run_name}(total, {', '.join(params)}):",
        "    nt = block_count(total)",
        f"    rec = np.empty((nt, {record_width(params, arrays)}), np.int64)",
        "    for t in range(nt):",
        "        rec[t, 0] = t * total // nt",
        "        rec[t, 1] = (t + 1) * total // nt"]
        + record_lines(params, arrays, "        ")
        + [f"    pool_run(nt, '{key}', rec)"])
    return body + "\n"
