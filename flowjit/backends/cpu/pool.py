"""Parallel loop kernels on the BLAS thread pool.

A training step alternates GEMMs (SciPy's OpenBLAS, with its own worker threads) and
fused loops. Running the loops on Numba's thread pool means two pools taking turns on
the same cores: a pool that sleeps between loops pays a wake-up per loop (157-757 us
measured for Numba's workqueue layer on a 2-core VM, for loops that take 100-300 us),
and a pool that spins holds the cores the other pool needs. OpenBLAS can run any C
function on its own threads (`gotoblas_pthread(n, fn, args, stride)`: the caller runs
task 0, its workers the others, and it returns when all are done), and right after a
GEMM those workers are still awake. So a big loop kernel is split into row blocks,
each described by one int64 record (block rows, sizes, array addresses and shapes), and
run by a Numba `cfunc` per kernel on OpenBLAS's threads: one pool for everything, as
PyTorch does with OpenMP.

Code generation asks `available()`; without a usable OpenBLAS (another BLAS, symbols
missing) kernels keep Numba's `prange`. Compiled code reaches the pool through two
symbols registered with LLVM by name (`flowjit_pool_run`, `flowjit_pool_threads`), and a
kernel's task through `flowjit_task_<kernel>`: addresses change from process to
process, names do not, so kernels stay in Numba's disk cache.
"""
import ctypes

import llvmlite.binding as ll
import llvmlite.ir as lir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

RUN_SYMBOL = "flowjit_pool_run"          # int gotoblas_pthread(int n, void (*)(int64*), int64*, int)
THREADS_SYMBOL = "flowjit_pool_threads"  # int openblas_get_num_threads(void)

state = {"available": None, "why": ""}
_keep = []          # ctypes objects whose addresses LLVM holds


def _cython_blas_path():
    """The file holding SciPy's cython_blas wrappers (found from its sgemm pointer). The
    OpenBLAS it calls is among that file's dependencies, which dlsym on it searches."""
    import scipy.linalg.cython_blas as cb
    capsule = cb.__pyx_capi__["sgemm"]
    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype = ctypes.c_char_p
    api.PyCapsule_GetName.argtypes = [ctypes.py_object]
    api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    ptr = api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule))

    class DlInfo(ctypes.Structure):
        _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                    ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]
    libc = ctypes.CDLL(None)
    info = DlInfo()
    if not libc.dladdr(ctypes.c_void_p(ptr), ctypes.byref(info)) or not info.dli_fname:
        raise OSError("dladdr found no library for SciPy's sgemm")
    return info.dli_fname.decode()


def available():
    """Whether loop kernels can run on OpenBLAS's threads in this process (found and
    registered once)."""
    if state["available"] is None:
        try:
            path = _cython_blas_path()
            lib = ctypes.CDLL(path)
            run = lib.gotoblas_pthread
            threads = None
            for name in ("scipy_openblas_get_num_threads", "openblas_get_num_threads"):
                if hasattr(lib, name):
                    threads = getattr(lib, name)
                    break
            if threads is None:
                raise OSError("no openblas_get_num_threads")
            ll.add_symbol(RUN_SYMBOL, ctypes.cast(run, ctypes.c_void_p).value)
            ll.add_symbol(THREADS_SYMBOL, ctypes.cast(threads, ctypes.c_void_p).value)
            _keep.extend([lib, run, threads])
            for name in ("scipy_openblas_set_num_threads", "openblas_set_num_threads"):
                if hasattr(lib, name):
                    state["get"], state["set"] = threads, getattr(lib, name)
                    break
            state.update(available=True, why=f"OpenBLAS thread pool (found through {path})")
        except Exception as e:  # noqa: BLE001  (any failure here only means: no pool)
            state.update(available=False, why=f"no OpenBLAS pool ({e}); loops use Numba's prange")
    return state["available"]


def register_task(name, cfunc_obj):
    """Make `flowjit_task_<name>` resolve to this process's compiled task (called when a
    generated module is imported, before its kernel is compiled or loaded). The pool's
    own symbols are registered first: a kernel loaded from Numba's disk cache links
    against them by name, and an unresolved name would be a null call."""
    if not available():
        raise RuntimeError(f"flowjit: kernel {name} was generated for the OpenBLAS thread pool, "
                           f"which this process cannot use ({state['why']}); delete the "
                           "flowjit cache directory to regenerate it")
    ll.add_symbol("flowjit_task_" + name, cfunc_obj.address)
    _keep.append(cfunc_obj)


# ---- intrinsics used by generated kernels ------------------------------------------
def _extern(builder, name, ret, args):
    fnty = lir.FunctionType(ret, args)
    return cgutils.get_or_insert_function(builder.module, fnty, name)


@intrinsic
def pool_threads(typingctx):
    """How many threads OpenBLAS would use now (threadpoolctl limits included)."""
    def codegen(context, builder, sig, args):
        fn = _extern(builder, THREADS_SYMBOL, lir.IntType(32), [])
        return builder.sext(builder.call(fn, []), lir.IntType(64))
    return types.int64(), codegen


@intrinsic
def pool_run(typingctx, ntasks, task_name, records):
    """Run task `flowjit_task_<task_name>` on rows 0..ntasks-1 of `records` (a C-contiguous
    int64 2-D array, one record per task) across OpenBLAS's threads; returns when done."""
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
# call BLAS (it runs on BLAS's own threads) and must not allocate or raise: Numba
# reports a cfunc's exception by taking the GIL, which the caller holds while it waits
# for the task.
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


def task_source(key, rows_name, params, arrays):
    """A C-callable task `<rows_name>_task` running `rows_name(row_lo, row_hi, *params)` on one
    record, registered under `key`."""
    args, k = [], 2
    for p in params:
        if p in arrays:
            dt, nd = arrays[p]
            shape = "".join(f"p[{k + 1 + a}], " for a in range(nd))
            args.append(f"carray(ptr_{dt}(p[{k}]), ({shape}))")
            k += 1 + nd
        else:
            args.append(f"p[{k}]")
            k += 1
    return (f"@cfunc(TASK_SIG, cache=CACHE, error_model='numpy')\n"
            f"def {rows_name}_task(p):\n"
            f"    {rows_name}(p[0], p[1], {', '.join(args)})\n\n\n"
            f"register_task('{key}', {rows_name}_task)\n")


def run_rows_source(key, rows_name, params, arrays):
    """`<rows_name>_run(total, *params)`: rows 0..total of `rows_name` split into one
    block per BLAS thread on the pool (in the caller alone with one thread), plus the
    task it runs. The blocks are contiguous row ranges in order."""
    width = record_width(params, arrays)
    body = "\n".join([
        "@njit(cache=CACHE, error_model='numpy')",
        f"def {rows_name}_run(total, {', '.join(params)}):",
        "    nt = min(pool_threads(), total)",
        "    if nt < 2:",
        f"        {rows_name}(np.int64(0), np.int64(total), {', '.join(params)})",
        "        return",
        f"    rec = np.empty((nt, {width}), np.int64)",
        "    for t in range(nt):",
        "        rec[t, 0] = t * total // nt",
        "        rec[t, 1] = (t + 1) * total // nt"]
        + record_lines(params, arrays, "        ")
        + [f"    pool_run(nt, '{key}', rec)"])
    return task_source(key, rows_name, params, arrays) + "\n\n" + body + "\n"
