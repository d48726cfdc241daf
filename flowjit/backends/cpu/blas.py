"""GEMMs on flowjit's thread pool: SciPy's BLAS, one thread per block.

OpenBLAS splits a multithreaded GEMM statically between its threads, and its result
depends on how many there are (float32 products differ in the last bits between 1 and
2 threads). So during a step flowjit keeps SciPy's OpenBLAS on one thread, and a big
GEMM is cut into blocks of output rows (or columns) whose number depends only on the
shapes and the pool's size; the blocks are single-threaded BLAS calls run on the
help-first pool (scheduler.py) like any loop kernel. The result is then the same to
the bit however many threads help, and a descheduled thread never stalls the step.

The cost of the split is that each block packs the shared operand again; measured on
the 2-core VM for the MLP's 128x784 @ 784x256, two blocks in sequence take 1.18x one
call, so a block is cut only where it keeps at least GEMM_BLOCK_MACS multiply-adds.

SciPy's `cython_blas` exports sgemm and dgemm (Fortran conventions: column-major, every
argument by pointer); they are registered with LLVM as `flowjit_sgemm`/`flowjit_dgemm`,
and the block task `flowjit_task_gemm` is a few lines of LLVM IR compiled once per
process. A row-major product C = op(A) op(B) is the column-major product
C^T = op(B)^T op(A)^T, so every call passes B first.
"""
import ctypes

import llvmlite.binding as ll
import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic
import llvmlite.ir as lir

from . import pool, scheduler

GEMM_BLOCK_MACS = 1 << 18       # the fewest multiply-adds worth a block of its own (softmax 784-10
                                # b100: 2^19 left its two 0.8M-MAC GEMMs on one thread, 144 us a
                                # step; 2^18: 109 us, NumPy 109; MLP and autoencoder unchanged)
ROW_ALIGN = 8                   # block sizes in rows/columns are multiples of this

_TASK_IR = r"""
declare void @flowjit_sgemm(ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr)
declare void @flowjit_dgemm(ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr)

define private i32 @field(ptr %r, i64 %i) {
  %p = getelementptr i64, ptr %r, i64 %i
  %v = load i64, ptr %p
  %t = trunc i64 %v to i32
  ret i32 %t
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
  %ints = alloca [6 x i32]
  %tb32 = call i32 @field(ptr %r, i64 1)
  %tb8 = trunc i32 %tb32 to i8
  store i8 %tb8, ptr %tb
  %ta32 = call i32 @field(ptr %r, i64 2)
  %ta8 = trunc i32 %ta32 to i8
  store i8 %ta8, ptr %ta
  %m = call i32 @field(ptr %r, i64 3)
  %n = call i32 @field(ptr %r, i64 4)
  %k = call i32 @field(ptr %r, i64 5)
  %ldb = call i32 @field(ptr %r, i64 7)
  %lda = call i32 @field(ptr %r, i64 9)
  %ldc = call i32 @field(ptr %r, i64 11)
  %pm = getelementptr [6 x i32], ptr %ints, i64 0, i64 0
  store i32 %m, ptr %pm
  %pn = getelementptr [6 x i32], ptr %ints, i64 0, i64 1
  store i32 %n, ptr %pn
  %pk = getelementptr [6 x i32], ptr %ints, i64 0, i64 2
  store i32 %k, ptr %pk
  %pldb = getelementptr [6 x i32], ptr %ints, i64 0, i64 3
  store i32 %ldb, ptr %pldb
  %plda = getelementptr [6 x i32], ptr %ints, i64 0, i64 4
  store i32 %lda, ptr %plda
  %pldc = getelementptr [6 x i32], ptr %ints, i64 0, i64 5
  store i32 %ldc, ptr %pldc
  %b = call ptr @field_ptr(ptr %r, i64 6)
  %a = call ptr @field_ptr(ptr %r, i64 8)
  %c = call ptr @field_ptr(ptr %r, i64 10)
  %dbl = call i32 @field(ptr %r, i64 0)
  %isd = icmp ne i32 %dbl, 0
  %acc = call i32 @field(ptr %r, i64 12)
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


def _thread_controls(lib):
    for prefix in ("scipy_openblas", "openblas"):
        if hasattr(lib, prefix + "_get_num_threads") and hasattr(lib, prefix + "_set_num_threads"):
            return getattr(lib, prefix + "_get_num_threads"), getattr(lib, prefix + "_set_num_threads")
    return None, None


def start():
    """Register SciPy's GEMMs and the block task (once per process); False where the
    pool or SciPy's BLAS is missing (GEMMs then stay single calls)."""
    if state["started"] is None:
        try:
            import scipy.linalg.cython_blas as cb
            if not scheduler.start():
                raise OSError(scheduler.state["why"])
            s, d = (_capsule_pointer(cb.__pyx_capi__[n]) for n in ("sgemm", "dgemm"))
            ll.add_symbol("flowjit_sgemm", s)
            ll.add_symbol("flowjit_dgemm", d)
            lib = ctypes.CDLL(_library_of(s))
            state["get"], state["set"] = _thread_controls(lib)
            mod = ll.parse_assembly(_TASK_IR)
            mod.verify()
            tm = ll.Target.from_default_triple().create_target_machine(opt=2)
            engine = ll.create_mcjit_compiler(mod, tm)
            engine.finalize_object()
            ll.add_symbol("flowjit_task_gemm", engine.get_function_address("flowjit_task_gemm"))
            _keep.extend([mod, tm, engine, lib])
            state.update(started=True, why="SciPy's BLAS, blocks on flowjit's pool")
        except Exception as e:  # noqa: BLE001  (any failure only means: GEMMs unsplit)
            state.update(started=False, why=f"GEMMs not split ({e})")
    return state["started"]


def get_threads():
    """SciPy's OpenBLAS thread count (what OPENBLAS_NUM_THREADS and threadpoolctl set),
    or None where it cannot be read."""
    return int(state["get"]()) if start() and state["get"] is not None else None


def set_threads(n):
    if start() and state["set"] is not None:
        state["set"](int(n))


@intrinsic
def data_address(typingctx, arr):
    """The address of an array's first element (any layout)."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        return builder.ptrtoint(a.data, lir.IntType(64))
    return types.int64(arr), codegen


@njit(cache=True, error_model="numpy")
def _storage(x, transposed, isz):
    """(stored transposed?, leading dimension) of a 2-D operand for BLAS, or (False, 0)
    when neither of its strides is one element (BLAS cannot read it in place)."""
    r, c = x.shape
    s0, s1 = x.strides
    if s1 == isz and s0 >= max(c, 1) * isz and s0 % isz == 0:
        return transposed, s0 // isz
    if s0 == isz and s1 >= max(r, 1) * isz and s1 % isz == 0:
        return not transposed, s1 // isz
    return False, 0


@njit(cache=True, error_model="numpy")
def pooled_gemm(a, b, out, ta, tb, accumulate):
    """out = op(a) @ op(b) (out += ... with `accumulate`) by BLAS: in blocks on the pool
    when big, else one call here; False (nothing done) when an operand's layout or a
    size does not suit BLAS."""
    M, N = out.shape
    K = a.shape[0] if ta else a.shape[1]
    blocks = min(pool.pool_size(), M * N * K // GEMM_BLOCK_MACS)
    # what BLAS would read and write must be exactly these shapes, in int32 sizes
    # (np.dot, the fallback, reports a mismatch)
    if (a.shape[1] if ta else a.shape[0]) != M or (b.shape[1] if tb else b.shape[0]) != K \
            or (b.shape[0] if tb else b.shape[1]) != N or max(M, N, K) >= 1 << 31:
        return False
    isz = out.itemsize
    if out.strides[1] != isz or out.strides[0] < N * isz or out.strides[0] % isz != 0:
        return False
    at, lda = _storage(a, ta, isz)
    bt, ldb = _storage(b, tb, isz)
    if lda == 0 or ldb == 0:
        return False
    ldc = out.strides[0] // isz
    rows = N < M                  # re-pack the smaller operand: 128x784 @ 784x256 in two
                                  # column blocks alone 948 us, row blocks 1060 (one call 905)
    dim = M if rows else N
    blocks = min(blocks, dim // ROW_ALIGN)
    if blocks < 2:                # one call, made here (no pool, no np.dot)
        blocks, step = 1, max(dim, 1)
    else:
        step = ((dim + blocks - 1) // blocks + ROW_ALIGN - 1) // ROW_ALIGN * ROW_ALIGN
        blocks = (dim + step - 1) // step
    pa, pb, pc = data_address(a), data_address(b), data_address(out)
    rec = np.empty((blocks, 13), np.int64)
    for i in range(blocks):
        lo = i * step
        hi = min(dim, lo + step)
        rec[i, 0] = 1 if isz == 8 else 0
        rec[i, 12] = 1 if accumulate else 0
        rec[i, 1] = 84 if bt else 78          # 'T' or 'N'
        rec[i, 2] = 84 if at else 78
        rec[i, 5] = K
        rec[i, 7] = ldb
        rec[i, 9] = lda
        rec[i, 11] = ldc
        if rows:                  # C rows lo..hi: columns of C^T, rows of op(A)
            rec[i, 3], rec[i, 4] = N, hi - lo
            rec[i, 6] = pb
            rec[i, 8] = pa + (lo if at else lo * lda) * isz
            rec[i, 10] = pc + lo * ldc * isz
        else:                     # C columns lo..hi: rows of C^T, columns of op(B)
            rec[i, 3], rec[i, 4] = hi - lo, M
            rec[i, 6] = pb + (lo * ldb if bt else lo) * isz
            rec[i, 8] = pa
            rec[i, 10] = pc + lo * isz
    if blocks == 1:
        _run_block(rec)
    else:
        pool.pool_run(blocks, "gemm", rec)
    return True


@intrinsic
def _run_block(typingctx, records):
    """Call the GEMM block task on the first record, in this thread."""
    def codegen(context, builder, sig, args):
        arr = context.make_array(sig.args[0])(context, builder, args[0])
        i8p = lir.IntType(8).as_pointer()
        fn = cgutils.get_or_insert_function(builder.module, lir.FunctionType(lir.VoidType(), [i8p]),
                                            "flowjit_task_gemm")
        builder.call(fn, [builder.bitcast(arr.data, i8p)])
        return context.get_dummy_value()
    return types.none(records), codegen
