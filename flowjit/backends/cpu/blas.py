"""GEMMs on flowjit's thread pool: OpenBLAS, one thread per block.

OpenBLAS splits a multithreaded GEMM statically between its threads, and its result
depends on how many there are (float32 products differ in the last bits between 1 and
2 threads). So during a step flowjit keeps OpenBLAS on one thread, and a big GEMM is
cut into blocks of output rows (or columns) whose number depends only on the shapes
and the pool's size; the blocks are single-threaded BLAS calls run on the help-first
pool (scheduler.py) like any loop kernel. The result is then the same to the bit
however many threads help, and a descheduled thread never stalls the step.

The cost of the split is that each block packs the shared operand again; measured on
the 2-core VM for the MLP's 128x784 @ 784x256, two blocks in sequence take 1.18x one
call, so a block is cut only where it keeps at least GEMM_BLOCK_MACS multiply-adds.

Which OpenBLAS: NumPy's own where its wheel bundles one (the scipy-openblas64 build,
64-bit integers), else SciPy's through `cython_blas` (32-bit integers). The same
products on one thread ran 5-40% faster in NumPy's (OpenBLAS 0.3.31 against SciPy's
0.3.30 on the 2-core AVX-512 VM: an LSTM's weight gradient 64x3200 @ 3200x1024 at 67-76
GFLOP/s against 46-54), with the same bits; and a step then wakes no second OpenBLAS
thread pool. Fortran conventions either way: column-major, every argument by pointer.
The chosen sgemm/dgemm are registered with LLVM as `flowjit_sgemm`/`flowjit_dgemm`, so
compiled code, cached on disk, works with either. The block task `flowjit_task_gemm`
is a few lines of LLVM IR compiled once per process, as is the call that checks the
operands and cuts the blocks (`flowjit_gemm`, gemm_ir.py), which compiled code reaches
through `gemm_call`. A row-major product C = op(A) op(B) is the column-major product
C^T = op(B)^T op(A)^T, so every call passes B first.
"""
import ctypes
import glob
import os

import llvmlite.binding as ll
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic
import llvmlite.ir as lir

from . import gemm_ir, pool, scheduler

GEMM_BLOCK_MACS = 1 << 18       # the fewest multiply-adds worth a block of its own (softmax 784-10
                                # b100: 2^19 left its two 0.8M-MAC GEMMs on one thread, 144 us a
                                # step; 2^18: 109 us, NumPy 109; MLP and autoencoder unchanged)
ROW_ALIGN = 8                   # block sizes in rows/columns are multiples of this

_TASK_IR = r"""  ; INT: the BLAS integer type (i32 or i64)
declare void @flowjit_sgemm(ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr)
declare void @flowjit_dgemm(ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr)

define private i32 @flag(ptr %r, i64 %i) {
  %p = getelementptr i64, ptr %r, i64 %i
  %v = load i64, ptr %p
  %t = trunc i64 %v to i32
  ret i32 %t
}

define private INT @field(ptr %r, i64 %i) {
  %p = getelementptr i64, ptr %r, i64 %i
  %v = load i64, ptr %p
  %t = CAST i64 %v to INT
  ret INT %t
}

define private ptr @field_ptr(ptr %r, i64 %i) {
  %p = getelementptr i64, ptr %r, i64 %i
  %v = load i64, ptr %p
  %q = inttoptr i64 %v to ptr
  ret ptr %q
}

; one record: [double?, trans of B, trans of A, m, n, k, B, ldb, A, lda, C, ldc, add to C?]
define void @flowjit_task_gemm(ptr %r) {
entry:
  %ta = alloca i8
  %tb = alloca i8
  %ints = alloca [6 x INT]
  %tb32 = call i32 @flag(ptr %r, i64 1)
  %tb8 = trunc i32 %tb32 to i8
  store i8 %tb8, ptr %tb
  %ta32 = call i32 @flag(ptr %r, i64 2)
  %ta8 = trunc i32 %ta32 to i8
  store i8 %ta8, ptr %ta
  %m = call INT @field(ptr %r, i64 3)
  %n = call INT @field(ptr %r, i64 4)
  %k = call INT @field(ptr %r, i64 5)
  %ldb = call INT @field(ptr %r, i64 7)
  %lda = call INT @field(ptr %r, i64 9)
  %ldc = call INT @field(ptr %r, i64 11)
  %pm = getelementptr [6 x INT], ptr %ints, i64 0, i64 0
  store INT %m, ptr %pm
  %pn = getelementptr [6 x INT], ptr %ints, i64 0, i64 1
  store INT %n, ptr %pn
  %pk = getelementptr [6 x INT], ptr %ints, i64 0, i64 2
  store INT %k, ptr %pk
  %pldb = getelementptr [6 x INT], ptr %ints, i64 0, i64 3
  store INT %ldb, ptr %pldb
  %plda = getelementptr [6 x INT], ptr %ints, i64 0, i64 4
  store INT %lda, ptr %plda
  %pldc = getelementptr [6 x INT], ptr %ints, i64 0, i64 5
  store INT %ldc, ptr %pldc
  %b = call ptr @field_ptr(ptr %r, i64 6)
  %a = call ptr @field_ptr(ptr %r, i64 8)
  %c = call ptr @field_ptr(ptr %r, i64 10)
  %dbl = call i32 @flag(ptr %r, i64 0)
  %isd = icmp ne i32 %dbl, 0
  %acc = call i32 @flag(ptr %r, i64 12)
  %accumulate = icmp ne i32 %acc, 0
  %fbeta = select i1 %accumulate, float 1.0, float 0.0
  %dbeta = select i1 %accumulate, double 1.0, double 0.0
  %sa = alloca float
  %sb = alloca float
  store float 1.0, ptr %sa
  store float %fbeta, ptr %sb
  %da = alloca double
  %db = alloca double
  store double 1.0, ptr %da
  store double %dbeta, ptr %db
  %gemm = select i1 %isd, ptr @flowjit_dgemm, ptr @flowjit_sgemm
  %alpha = select i1 %isd, ptr %da, ptr %sa
  %beta = select i1 %isd, ptr %db, ptr %sb
  call void %gemm(ptr %tb, ptr %ta, ptr %pm, ptr %pn, ptr %pk, ptr %alpha, ptr %b, ptr %pldb,
                  ptr %a, ptr %plda, ptr %beta, ptr %c, ptr %pldc)
  ret void
}
"""

state = {"started": None, "why": "", "get": None, "set": None}
_keep = []


def _capsule_pointer(capsule):
    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype = ctypes.c_char_p
    api.PyCapsule_GetName.argtypes = [ctypes.py_object]
    api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule))


def _library_of(address):
    """The file of the shared library holding `address`: SciPy's OpenBLAS is among the
    dependencies of the file holding its cython_blas wrappers, which dlsym searches."""
    class DlInfo(ctypes.Structure):
        _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                    ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]
    libc = ctypes.CDLL(None)
    info = DlInfo()
    if not libc.dladdr(ctypes.c_void_p(address), ctypes.byref(info)) or not info.dli_fname:
        raise OSError("dladdr found no library for SciPy's sgemm")
    return info.dli_fname.decode()


def _thread_controls(lib, suffix=""):
    for prefix in ("scipy_openblas", "openblas"):
        get, put = (prefix + f"_{verb}_num_threads" + suffix for verb in ("get", "set"))
        if hasattr(lib, get) and hasattr(lib, put):
            return getattr(lib, get), getattr(lib, put)
    return None, None


def _numpy_openblas():
    """NumPy's bundled OpenBLAS (its wheels' ILP64 build: symbols scipy_sgemm_64_ or
    sgemm_64_, 64-bit integers) as (sgemm, dgemm, get, set, library), or None where NumPy
    has no such library (a build on MKL, Accelerate or a system BLAS). The file is already loaded by NumPy, so
    this is NumPy's own instance, thread pool and all."""
    import numpy
    here = os.path.dirname(numpy.__file__)
    for path in sorted(glob.glob(os.path.join(here, os.pardir, "numpy.libs", "*openblas64*"))
                       + glob.glob(os.path.join(here, ".dylibs", "*openblas64*"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        get, put = _thread_controls(lib, "64_")
        for prefix in ("scipy_", ""):          # NumPy 2 wheels; NumPy 1.26's openblas64_
            names = (prefix + "sgemm_64_", prefix + "dgemm_64_")
            if all(hasattr(lib, n) for n in names) and get is not None:
                return (*(ctypes.cast(getattr(lib, n), ctypes.c_void_p).value for n in names),
                        get, put, lib)
    return None


def _scipy_openblas():
    """SciPy's BLAS through cython_blas (32-bit integers) as (sgemm, dgemm, get, set,
    library)."""
    import scipy.linalg.cython_blas as cb
    s, d = (_capsule_pointer(cb.__pyx_capi__[n]) for n in ("sgemm", "dgemm"))
    lib = ctypes.CDLL(_library_of(s))
    return (s, d, *_thread_controls(lib), lib)


def start():
    """Register the GEMMs and the block task (once per process); False where the pool or
    a BLAS is missing (GEMMs then stay single calls)."""
    if state["started"] is None:
        try:
            if not scheduler.start():
                raise OSError(scheduler.state["why"])
            found = None if os.environ.get("FLOWJIT_BLAS") == "scipy" else _numpy_openblas()
            which, bits = ("NumPy's OpenBLAS", 64) if found else ("SciPy's BLAS", 32)
            s, d, state["get"], state["set"], lib = found or _scipy_openblas()
            ll.add_symbol("flowjit_sgemm", s)
            ll.add_symbol("flowjit_dgemm", d)
            task_ir = _TASK_IR.replace("INT", f"i{bits}").replace(
                "CAST", "trunc" if bits == 32 else "bitcast")
            mod = ll.parse_assembly(task_ir)
            mod.verify()
            tm = ll.Target.from_default_triple().create_target_machine(opt=2)
            engine = ll.create_mcjit_compiler(mod, tm)
            engine.finalize_object()
            ll.add_symbol("flowjit_task_gemm", engine.get_function_address("flowjit_task_gemm"))
            gemm_mod = ll.parse_assembly(gemm_ir.module("flowjit_task_gemm", pool.RUN_SYMBOL,
                                                        pool.SIZE_SYMBOL, GEMM_BLOCK_MACS, ROW_ALIGN))
            gemm_mod.verify()
            gemm_engine = ll.create_mcjit_compiler(gemm_mod, tm)
            gemm_engine.finalize_object()
            ll.add_symbol(gemm_ir.NAME, gemm_engine.get_function_address(gemm_ir.NAME))
            _keep.extend([mod, tm, engine, lib, gemm_mod, gemm_engine])
            state.update(started=True, why=f"{which}, blocks on flowjit's pool")
        except Exception as e:  # noqa: BLE001  (any failure only means: GEMMs unsplit)
            state.update(started=False, why=f"GEMMs not split ({e})")
    return state["started"]


def get_threads():
    """The thread count of the OpenBLAS the GEMMs call (what OPENBLAS_NUM_THREADS and
    threadpoolctl set), or None where it cannot be read."""
    get = state["get"]          # (set once started: a step reads it twice a call)
    if get is None:
        if not start() or state["get"] is None:
            return None
        get = state["get"]
    return int(get())


def set_threads(n):
    set_count = state["set"]
    if set_count is None:
        if not start() or state["set"] is None:
            return
        set_count = state["set"]
    set_count(int(n))


@intrinsic
def gemm_call(typingctx, a, b, out, ta, tb, acc):
    """out = op(a) @ op(b) (out += ... with `acc`) through `flowjit_gemm` (gemm_ir.py):
    0 when done, 1 when the shapes do not make the product, 2 when out of memory. The
    three arrays are 2-D of one float dtype; any layout, any strides."""
    if not start():       # the symbol the call links against, before anything compiles it
        raise TypingError(f"gemm_call: {state['why']}")
    arrays = (a, b, out)
    if not all(isinstance(t, types.Array) and t.ndim == 2 and t.dtype == out.dtype
               and t.dtype in (types.float32, types.float64) for t in arrays):
        raise TypingError(f"gemm_call: three 2-D float arrays of one dtype, got {arrays}")

    def codegen(context, builder, sig, args):
        i64 = lir.IntType(64)
        values = []
        for t, v in zip(sig.args[:3], args[:3]):
            arr = context.make_array(t)(context, builder, v)
            values.append(builder.bitcast(arr.data, lir.IntType(8).as_pointer()))
            values += cgutils.unpack_tuple(builder, arr.shape, 2)
            values += cgutils.unpack_tuple(builder, arr.strides, 2)
        values.append(lir.Constant(i64, out.dtype.bitwidth // 8))
        values += [context.cast(builder, v, t, types.int64) for t, v in zip(sig.args[3:], args[3:])]
        fnty = lir.FunctionType(lir.IntType(32), [v.type for v in values])
        fn = cgutils.get_or_insert_function(builder.module, fnty, gemm_ir.NAME)
        return builder.call(fn, values)
    return types.int32(a, b, out, ta, tb, acc), codegen
