"""Device memory and launch geometry for the CUDA backend.

Works on a real GPU (numba.cuda / numba-cuda) and under the Numba CUDA simulator
(`NUMBA_ENABLE_CUDASIM=1`), where every CUDA thread is a Python thread: there the
launch geometry is tiny (a warp-sized block, a few blocks) so tests stay fast.
"""
import warnings

import numpy as np
from numba import config as _nb_config
from numba import cuda

from ...runtime import stats as S
from ...runtime.devices import DeviceArray

# numba-cuda releases that register an overload for np.row_stack (removed in NumPy 2.5)
# fail inside their typing setup at the first kernel compile unless the alias exists.
if not hasattr(np, "row_stack"):
    np.row_stack = np.vstack
# Small tensors give small grids by design (a bias of 10 floats is one block); Numba's
# "low occupancy" warning on each such launch says nothing the user can act on.
# (numba-cuda raises its own copy of the warning class, so match the message)
warnings.filterwarnings("ignore", message=r".*GPU under-utilization due to low occupancy")

SIM = bool(_nb_config.ENABLE_CUDASIM)

try:        # what the driver raises for a launch it refuses
    from numba.cuda.cudadrv.driver import CudaAPIError as _LaunchError
except ImportError:                   # (a numba.cuda without it: nothing to catch)
    class _LaunchError(Exception):
        pass
try:        # numba-cuda 0.30 on launches through cuda.core, which raises its own error
    from cuda.core._utils.cuda_utils import CUDAError as _CoreError
    LAUNCH_ERRORS = (_LaunchError, _CoreError)
except ImportError:
    LAUNCH_ERRORS = (_LaunchError,)



class Counted:
    """A kernel whose launches fj.stats() counts: `k[grid, block](*args)` as for the
    kernel itself, counted when it runs (a launch under an `if` only when taken).
    `blocks`: a cooperative kernel's grid size, once known (coop_grid). `unusable`: the
    device refused to launch it (matmul: the big tiles' kernel). `prepared`: its
    arguments as marshalled for the last launch (PreparedLaunch), on a GPU."""
    __slots__ = ("kernel", "blocks", "unusable", "prepared")

    def __init__(self, kernel):
        self.kernel = kernel
        self.blocks = None
        self.unusable = False
        self.prepared = None

    def __getitem__(self, config):
        if PREPARED_LAUNCHES and not SIM:
            return lambda *args: self._launch(config, args)
        launch = self.kernel[config]

        def counted(*args):
            S.bump("kernel_launches")
            return launch(*args)
        return counted

    def _launch(self, config, args):
        S.bump("kernel_launches")
        p = self.prepared
        try:
            if p is not None and p.launch(config, args):
                return
        except LAUNCH_ERRORS:
            raise                           # the device's answer, as numba's launch would get it
        except Exception as e:              # a numba-cuda whose internals differ: its own launch
            self._give_up(e)
        self.kernel[config](*args)          # numba's own launch (it compiles on first use)
        if PREPARED_LAUNCHES:
            try:
                self.prepared = PreparedLaunch.after(self.kernel, config, args)
            except Exception as e:
                self._give_up(e)

    def _give_up(self, e):
        global PREPARED_LAUNCHES
        PREPARED_LAUNCHES = False
        self.prepared = None
        warnings.warn(f"flowjit: kernel arguments are marshalled on every launch ({type(e).__name__}: {e})",
                      RuntimeWarning)


# Counted kernels keep their marshalled arguments between launches (off: numba-cuda
# marshals every argument of every launch; perf/bench_gpu.py measures both)
PREPARED_LAUNCHES = True


class PreparedLaunch:
    """A kernel overload's arguments as numba-cuda marshals them (`_Kernel._prepare_args`:
    ctypes values, an array as meminfo, parent, size, itemsize, data pointer, shape,
    strides), kept for the next launch. A training step launches the same kernels on
    the same buffers every call (scratch buffers live in the executable's pool,
    variables in place), so most arguments are unchanged: an array whose memory, shape
    and dtype are the ones last seen keeps its values, a changed pointer or scalar is
    marshalled again alone, and a changed shape or type (another overload) goes back to
    numba's own launch. Why: that marshalling, repeated per argument and per launch, was
    most of a small step's host time (issue 22)."""

    def __init__(self, overload, args, keys, kernelargs, slots):
        self.overload, self.keys, self.kernelargs, self.slots = overload, keys, kernelargs, slots
        self.cufunc = overload._codelibrary.get_cufunc()
        self.cooperative = bool(getattr(overload, "cooperative", False))
        self.held = list(args)       # keeps each array's memory alive while its pointer is kept

    @classmethod
    def after(cls, dispatcher, config, args):
        """The prepared launch of the overload numba just launched for `args`, or None
        when its arguments cannot be kept (a host array copied in, a debug kernel, a
        launch configuration other than (blocks, threads))."""
        if not _plain_config(config):
            return None
        overload = dispatcher.overloads.get(tuple(dispatcher.typeof_pyval(a) for a in args))
        if overload is None or getattr(overload, "debug", False) or getattr(overload, "extensions", None):
            return None
        kernelargs, slots, keys = [], [], []
        for t, v in zip(overload.argument_types, args):
            key = _arg_key(v)
            if key is None:
                return None
            start, retr = len(kernelargs), []
            overload._prepare_args(t, v, 0, retr, kernelargs)
            if retr:
                return None
            slots.append((start, len(kernelargs)))
            keys.append(key)
        return cls(overload, args, keys, kernelargs, slots)

    def launch(self, config, args):
        """Launch with the kept arguments, re-marshalling those that changed; False when
        numba's own launch must run instead (another overload, or a config it must read)."""
        if len(args) != len(self.keys) or not _plain_config(config):
            return False
        for i, v in enumerate(args):
            key, old = _arg_key(v), self.keys[i]
            if key == old:
                continue                # (an array's old memory is held: its id is not reused)
            if key is None or key[0] != old[0] or (key[0] == "array" and key[1:4] != old[1:4]):
                return False            # another type, dtype or shape: maybe another overload
            part, retr = [], []
            self.overload._prepare_args(self.overload.argument_types[i], v, 0, retr, part)
            a, b = self.slots[i]
            if retr or len(part) != b - a:
                return False
            self.kernelargs[a:b] = part
            self.keys[i], self.held[i] = key, v
        grid, block = config
        driver_launch(self.cufunc, grid, block, self.kernelargs, self.cooperative)
        return True


def _plain_config(config):
    return isinstance(config, tuple) and len(config) == 2 and type(config[0]) is int and type(config[1]) is int


def _arg_key(v):
    """What decides an argument's marshalled values: ("array", dtype, shape, strides,
    memory) for a device array, (type, value) for a scalar; None for anything else."""
    if hasattr(v, "gpu_data") and hasattr(v, "strides"):
        return ("array", v.dtype, tuple(v.shape), tuple(v.strides), id(v.gpu_data))
    if isinstance(v, (np.integer, np.floating, np.bool_, int, float, bool)):
        return (type(v), v)
    return None


def driver_launch(cufunc, grid, block, kernelargs, cooperative):
    """Launch `cufunc` on the default stream with arguments as numba-cuda marshals them,
    the way this numba-cuda's own _Kernel.launch does."""
    global _launcher
    if _launcher is None:
        _launcher = _find_launcher()
    _launcher(cufunc, grid, block, kernelargs, cooperative)


_launcher = None


def _find_launcher():
    """numba-cuda up to 0.2x: its driver's launch_kernel (the stream a CUstream with
    NVIDIA's bindings, a null pointer with ctypes'); 0.30 on: cuda.core's launch, which
    its dispatcher module imports, with a LaunchConfig per configuration."""
    from numba.cuda.cudadrv import driver
    if hasattr(driver, "launch_kernel"):
        nv = getattr(driver, "USE_NV_BINDING", False) and hasattr(driver, "binding")
        stream = driver.binding.CUstream(0) if nv else 0

        def launch_kernel(cufunc, grid, block, kernelargs, cooperative):
            driver.launch_kernel(cufunc.handle, grid, 1, 1, block, 1, 1, 0, stream, kernelargs,
                                 cooperative=cooperative)
        return launch_kernel
    from numba.cuda import dispatcher
    stream = driver._to_core_stream(0)
    coop = "is_cooperative" if getattr(dispatcher, "CUDA_CORE_GE_1_0", True) else "cooperative_launch"
    configs = {}

    def core_launch(cufunc, grid, block, kernelargs, cooperative):
        key = (grid, block, cooperative)
        config = configs.get(key)
        if config is None:
            config = configs[key] = dispatcher.LaunchConfig(grid=grid, block=block, shmem_size=0,
                                                            **{coop: cooperative})
        dispatcher.launch(stream, config, cufunc.kernel, *kernelargs)
    return core_launch


def _patch_simulator_shared_arrays():
    """Numba's simulator gives a block's threads one shared array per source line, but
    checks-then-sets its table without a lock: two threads can each create their own
    "shared" array, and a block-level reduction then silently reads garbage. Same
    lookup, under a lock."""
    import sys
    import threading
    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support
    lock = threading.Lock()
    original = kernelapi.FakeCUDAShared.array

    def array(self, shape, dtype):
        if shape == 0:
            return original(self, shape, dtype)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        f = sys._getframe(1)
        caller = (f.f_code.co_filename, f.f_lineno)
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res
    kernelapi.FakeCUDAShared.array = array


def _patch_simulator_device_calls():
    """The simulator runs a device function with the `cuda` of its module swapped for
    the kernel's fake one, and swaps it back when the call returns. A custom op's
    device function (in the user's module) is called by all of a block's threads at
    once: the first to return swapped it back under the others, whose `cuda.grid(1)`
    then failed. Swap once per module, back when its last caller returns."""
    import contextlib
    import threading
    from numba.cuda.simulator import kernel
    lock = threading.Lock()
    active = {}                     # id(module globals) -> [callers, original bindings]

    @contextlib.contextmanager
    def swapped(fn, fake):
        g = fn.__globals__
        with lock:
            entry = active.get(id(g))
            if entry is None:
                orig = {k: v for k, v in g.items() if v is cuda}
                g.update(dict.fromkeys(orig, fake))
                entry = active[id(g)] = [0, orig]
            entry[0] += 1
        try:
            yield
        finally:
            with lock:
                entry[0] -= 1
                if entry[0] == 0:
                    g.update(entry[1])
                    del active[id(g)]
    kernel.swapped_cuda_module = swapped


if SIM:
    _patch_simulator_shared_arrays()
    _patch_simulator_device_calls()

# threads per block of the loop/reduction kernels (a power of two: tree reductions)
TPB = 8 if SIM else 256
# matmul tiling: block tile BM x BN, k-step BK, each thread computes TM x TN outputs
# (a block has (BN / TN) * (BM / TM) threads: TPB, so a matmul can be one phase of a
# single-launch step, whose block size is TPB for every phase)
MM = dict(BM=8, BN=8, BK=8, TM=2, TN=4) if SIM else dict(BM=64, BN=64, BK=8, TM=4, TN=4)
# a big product's own launch: 128 x 128 tiles, 8 x 8 outputs a thread (4x the work per
# shared-memory load of MM; its registers would hold back every phase of a fused launch,
# so it is never one). Under the simulator: the same size as MM, another register block.
MM_BIG = dict(BM=8, BN=8, BK=8, TM=4, TN=2) if SIM else dict(BM=128, BN=128, BK=8, TM=8, TN=8)
for _mm in (MM, MM_BIG):
    assert (_mm["BN"] // _mm["TN"]) * (_mm["BM"] // _mm["TM"]) == TPB
# (M, N, K) below which a product never takes the big tiles: a matmul whose known sizes
# are smaller is compiled without the choice (kernels.matmul_lines)
BIG_MIN = (32, 32, 8) if SIM else (1024, 1024, 256)
_max_blocks = None


def max_blocks():
    """Grid-stride kernels launch at most this many blocks (enough to fill the GPU)."""
    global _max_blocks
    if _max_blocks is None:
        if SIM:
            _max_blocks = 2
        else:
            dev = cuda.get_current_device()
            _max_blocks = dev.MULTIPROCESSOR_COUNT * (2048 // TPB) * 2
    return _max_blocks


def grid(total):
    """Blocks for a grid-stride loop over `total` elements."""
    return max(1, min((int(total) + TPB - 1) // TPB, max_blocks()))


def row_splits(rows, length):
    """How many blocks share one row of a row-wise reduction: 1 when there are enough
    rows to fill the GPU, more for a few long rows (then a final pass combines them)."""
    rows, length = int(rows), int(length)
    if SIM:
        return 2 if (rows == 1 and length > 4 * TPB) else 1
    want = max_blocks()
    if rows >= want // 4 or length <= 4 * TPB:
        return 1
    return max(1, min(want // max(rows, 1), (length + 4 * TPB - 1) // (4 * TPB), 1024))


def col_splits(rows, length):
    """Chunks of a column reduction's reduced range: enough threads to fill the GPU,
    each summing at least 16 elements."""
    rows, length = int(rows), int(length)
    if SIM:
        return 2 if length > 4 else 1
    if length < 64:
        return 1
    target = max_blocks() * TPB // 2
    return max(1, min((target + rows - 1) // max(rows, 1), (length + 15) // 16, 1024))


def as_device_array(x):
    """A numba device array over x's memory (no copy): CuPy arrays, torch CUDA tensors,
    numba device arrays."""
    if SIM:
        if type(x).__name__ == "FakeCUDAArray":
            return x
        raise TypeError("foreign CUDA arrays cannot be used under the CUDA simulator")
    devicearray = getattr(cuda, "devicearray", None)
    if devicearray is not None and isinstance(x, devicearray.DeviceNDArray):
        return x
    return cuda.as_cuda_array(x)


def is_contiguous(a):
    if SIM:
        return a._ary.flags.c_contiguous
    return a.is_c_contiguous()


def device_count():
    return len(cuda.gpus) if cuda.is_available() else 0


def to_device(host):
    return cuda.to_device(np.ascontiguousarray(host))


def empty(n, dtype):
    return cuda.device_array(int(n), dtype)


def to_host(dev):
    return dev.copy_to_host()


class Memory:
    """GPU memory for runtime/devices: a variable's value is a flat device array."""
    kind = "GPU"

    def upload(self, host):
        return to_device(np.ascontiguousarray(host).reshape(-1))

    def download(self, buf, shape):
        return to_host(buf).reshape(shape)

    def store(self, buf, value, shape, copy=True):
        value = value if len(value.shape) == 1 else value.reshape(-1)
        if not copy and not isinstance(value, np.ndarray):
            return value                   # adopt the step's new device buffer
        buf.copy_to_device(np.ascontiguousarray(value) if isinstance(value, np.ndarray) else value)
        return buf

    def arguments(self, values):
        """Device arrays for a program's inputs: host arrays uploaded, device ones (a
        runtime/devices.DeviceArray, a variable's buffer) used in place."""
        return [self._argument(a) for a in values]

    def _argument(self, a):
        if isinstance(a, np.ndarray):
            return to_device(a)
        dev = a.buf if type(a) is DeviceArray else a
        return dev if is_contiguous(dev) else contiguous(dev)

    def constants(self, arrays):
        return [to_device(np.ascontiguousarray(a).reshape(-1)) for a in arrays]

    def copy(self, buf):
        return copy(buf)


def flat(a):
    """A 1-d view of a C-contiguous device array (0-d becomes shape (1,))."""
    if len(a.shape) == 1:
        return a
    n = 1
    for d in a.shape:
        n *= d
    return a.reshape(max(n, 1) if len(a.shape) == 0 else n)


def contiguous(a):
    """A C-contiguous copy of a strided device array (done on the host: rare)."""
    return to_device(np.ascontiguousarray(a.copy_to_host()))


def synchronize():
    cuda.synchronize()


def blocks(n):
    """Blocks for a kernel that loops over n block-sized work items (rows)."""
    return max(1, min(int(n), 1 << 16 if not SIM else 4))


def row_threads(length, splits):
    """Threads per block of a row reduction: a power of two covering a row's share,
    at least a warp, at most TPB."""
    want = (int(length) + int(splits) - 1) // max(int(splits), 1)
    t = 32 if not SIM else 2
    while t < want and t < TPB:
        t *= 2
    return t


def cdiv(a, b):
    return max(1, (int(a) + b - 1) // b)


def _fills_with_big_tiles(M, N, K):
    """Whether a product has enough 128 x 128 tiles for two waves over the multiprocessors
    (fewer, bigger tiles would leave some idle) and a K worth the longer tile loop."""
    if M < BIG_MIN[0] or N < BIG_MIN[1] or K < BIG_MIN[2]:
        return False
    sms = 1 if SIM else cuda.get_current_device().MULTIPROCESSOR_COUNT
    return M * N >= 2 * sms * MM_BIG["BM"] * MM_BIG["BN"]


def matmul(big, small, M, N, K, nb, A, B, C):
    """C = A @ B (3-D views) with the big tiles' kernel when the product fills the GPU
    with them, else the standard tiling. A device that refuses to launch the big kernel
    (its registers or shared memory over the device's limits) gets the standard one from
    then on: the call still computes C, and a warning says so once."""
    M, N, K, nb = int(M), int(N), int(K), max(1, int(nb))
    if not big.unusable and _fills_with_big_tiles(M, N, K):
        try:
            big[blocks(cdiv(N, MM_BIG["BN"]) * cdiv(M, MM_BIG["BM"]) * nb), TPB](A, B, C)
            return
        except LAUNCH_ERRORS as e:
            big.unusable = True
            warnings.warn(f"flowjit: the {MM_BIG['BM']}x{MM_BIG['BN']}-tile matmul kernel cannot "
                          f"launch on this device ({e}); products use {MM['BM']}x{MM['BN']} tiles",
                          RuntimeWarning)
    small[blocks(cdiv(N, MM["BN"]) * cdiv(M, MM["BM"]) * nb), TPB](A, B, C)


@Counted
@cuda.jit
def _fill_zero(a):
    t = cuda.grid(1)
    while t < a.shape[0]:
        a[t] = 0
        t += cuda.gridsize(1)


def zeros(n, dtype):
    a = cuda.device_array(int(n), dtype)
    if n:
        _fill_zero[grid(n), TPB](a)
    return a


def shaped(a, shape):
    """A flat buffer with the program output's shape (rank 0 keeps shape (1,))."""
    if len(shape) <= 1:
        return a
    return a.reshape(shape)


def copy(a):
    out = cuda.device_array(a.shape, a.dtype)
    out.copy_to_device(a)
    return out


def scratch(pool, key, n, dtype, zero=False):
    """A temporary buffer kept by an executable between calls (reallocated when the
    size changes); `zero` clears it on every call."""
    n = int(n)
    a = pool.get(key)
    if a is None or a.shape[0] != n or a.dtype != np.dtype(dtype):
        a = pool[key] = cuda.device_array(n, dtype)
    if zero and n:
        _fill_zero[grid(n), TPB](a)
    return a


def coop_grid(k):
    """Blocks of a cooperative launch of Counted kernel `k` (backends/cuda/fused_launch.py):
    every block must be resident at once. The simulator runs grid barriers for one block
    only. On a GPU the first launch uses one block per multiprocessor (a block of TPB
    threads always fits), later ones as many as the compiled kernel's resources allow."""
    if SIM:
        return 1
    if k.blocks is not None:
        return k.blocks
    overloads = list(getattr(k.kernel, "overloads", {}).values())
    sms = cuda.get_current_device().MULTIPROCESSOR_COUNT
    if not overloads:
        return sms
    k.blocks = max(sms, min(overloads[0].max_cooperative_grid_blocks(TPB), max_blocks()))
    return k.blocks


_cooperative = None


def cooperative_launches():
    """Whether this device runs cooperative kernels (grid-wide barriers): checked once
    with a two-block kernel; where it fails, steps keep one launch per kernel."""
    global _cooperative
    if _cooperative is None:
        if SIM:
            _cooperative = True
        else:
            try:
                _cooperative = _probe_cooperative()
            except Exception as e:       # a driver or linker without grid groups
                warnings.warn(f"flowjit: cooperative CUDA launches are unavailable ({type(e).__name__}: "
                              f"{e}); each kernel of a step launches on its own", RuntimeWarning)
                _cooperative = False
    return _cooperative


def _probe_cooperative():
    @cuda.jit
    def probe(out):
        g = cuda.cg.this_grid()
        if cuda.threadIdx.x == 0:
            out[cuda.blockIdx.x] = cuda.blockIdx.x + 1
        g.sync()
        if cuda.threadIdx.x == 0 and cuda.blockIdx.x == 0:
            out[2] = out[0] + out[1]
    out = cuda.to_device(np.zeros(3, np.int64))
    probe[2, 32](out)
    return int(out.copy_to_host()[2]) == 3
