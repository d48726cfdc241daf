"""Compiled code's door to packed-weight products (packed_ir.py): `pack_call` and
`pgemm_call`, intrinsics calling the IR functions by name, registered with LLVM once
per process. The IR is compiled for this machine's CPU (its vector width and FMA):
llvmlite builds it in 0.12-0.27 s (AVX2's tiles, AVX-512's), so its machine code is kept
in the disk cache (`packed/<key>.o`, keyed by packed_ir.py's source, the geometry, the
CPU and LLVM), where a later process loads it in about a millisecond."""
import hashlib
import os
import tempfile

import llvmlite
import llvmlite.binding as ll
import llvmlite.ir as lir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from . import forked, narrow_ir, packed_ir, scheduler


def _geometry():
    """AVX-512's tiles where the CPU has it (unless FLOWJIT_PACKED_WIDTH=8 asks for
    AVX2's, which tests use to run the other geometry), else AVX2's."""
    ll.initialize_native_target()
    wide = ll.get_host_cpu_features().get("avx512f", False)
    width = os.environ.get("FLOWJIT_PACKED_WIDTH") or (16 if wide else 8)
    if str(width) not in ("8", "16"):
        raise ValueError(f"FLOWJIT_PACKED_WIDTH must be 8 or 16, got {width!r}")
    return packed_ir.GEOMETRIES[int(width)]


GEOMETRY = _geometry()
PANEL = GEOMETRY.panel
# a block keeps at least this many multiply-adds (blas.py's rule for GEMM blocks)
BLOCK_MACS = 1 << 18

# object: how this process got the machine code, "compiled", "loaded" (from the disk
# cache) or "compiled aside" (by a child forked when code generation first asked)
state = {"started": None, "why": "", "object": None}
_keep = []
_aside = {"pid": None, "ok": False, "tried": False}   # the child compiling aside, its outcome
ASIDE_TIMEOUT = 120.0       # seconds a child compiling the module aside may take


def available():
    """Whether packed products can be used here (code generation asks before it emits
    them). The first time, where their machine code is not in the disk cache yet, a
    forked child compiles it into the cache (0.2-0.27 s) while this process goes on
    generating code, dry-running and loading Numba's registries: start(), later, loads
    it from there. A cold LSTM's first call waited for that compile in line."""
    if state["started"] is not None:
        return state["started"]
    if not _aside["tried"] and scheduler.start():
        _aside["tried"] = True
        _compile_aside()
    # (nothing forked: the cache holds them, is off, or the platform cannot fork)
    return True if _aside["pid"] is not None else start()


def start():
    """Compile the packed-product functions, or load them from the disk cache, and
    register them (once per process); False where that failed (code generation then
    leaves products to BLAS)."""
    if state["started"] is None:
        try:
            if not scheduler.start():
                raise OSError(scheduler.state["why"])
            tm = _target_machine()
            aside = _wait_aside()
            obj = _machine_code(tm)
            if aside and state["object"] == "loaded":
                state["object"] = "compiled aside"
            # the object file's functions, linked against the pool's symbols by name
            engine = ll.create_mcjit_compiler(ll.parse_assembly(""), tm)
            engine.add_object_file(ll.ObjectFileRef.from_data(obj))
            engine.finalize_object()
            for name in (packed_ir.PACK_NAME, packed_ir.GEMM_NAME, packed_ir.PANEL_NAME, packed_ir.PACKING_NAME,
                         narrow_ir.NAME):
                address = engine.get_function_address(name)
                if not address:
                    raise RuntimeError(f"{name} missing from the packed products' machine code")
                ll.add_symbol(name, address)
            _keep.extend([tm, engine])
            state.update(started=True, why="")
        except Exception as e:  # noqa: BLE001  (any failure only means: no packed products)
            state.update(started=False, why=f"no packed products ({e})")
    return state["started"]


def _target_machine():
    return ll.Target.from_default_triple().create_target_machine(
        cpu=ll.get_host_cpu_name(), features=ll.get_host_cpu_features().flatten(), opt=3)


def _compile_aside():
    """Fork a child that compiles the module into the disk cache and leaves (nothing to
    do where the cache is off, already holds it, or the platform cannot fork)."""
    if not hasattr(os, "fork"):
        return
    tm = _target_machine()
    path = _cache_path(tm)
    if path is None or _read(path) is not None:
        return
    _aside["pid"] = forked.fork_child(lambda: _write(path, _compile(tm)))


def compiling_aside():
    """1 while a child compiles the module for this process (a sample of the machine's
    load counts it as another process's thread), else 0."""
    if _aside["pid"] is not None:
        ok = forked.poll(_aside["pid"])
        if ok is not None:
            _aside.update(pid=None, ok=ok)
    return 0 if _aside["pid"] is None else 1


def _wait_aside():
    """Wait for the child compiling aside, if one was started: True when it left having
    done its work (its machine code is then in the cache, unless something removed it)."""
    pid = _aside["pid"]
    if pid is not None:
        _aside.update(pid=None, ok=forked.wait([pid], ASIDE_TIMEOUT, every=0.002)[pid])
    ok, _aside["ok"] = _aside["ok"], False
    return ok


def _compile(tm):
    mod = ll.parse_assembly(packed_ir.module(scheduler.RUN_SYMBOL, scheduler.SIZE_SYMBOL, BLOCK_MACS, GEOMETRY))
    mod.verify()
    # no IR pass pipeline: the IR is written as it should run (accumulators in phis,
    # invariants outside the loops), and LLVM's O1-O3 pipelines made the kernel slower
    # (64x1024 @ 1024x256: 100 -> 77-96 GFLOP/s a thread) and cost 0.4-0.7 s in every
    # process against 0.07 s for code generation alone
    return tm.emit_object(mod)


def _machine_code(tm):
    """The module's object code: from the disk cache, else compiled (and saved there)."""
    path = _cache_path(tm)
    obj = _read(path) if path else None
    state["object"] = "loaded" if obj is not None else "compiled"
    if obj is None:
        obj = _compile(tm)
        if path:
            _write(path, obj)
    return obj


def _cache_path(tm):
    """cache_dir()/packed/<key>.o, or None where the disk cache is off or unsafe. The
    key covers what the machine code depends on: packed_ir.py and narrow_ir.py (which
    write the IR), the module's parameters, the CPU and its features, LLVM's and
    llvmlite's versions."""
    from ... import runtime_config as cfg
    if not cfg.disk_cache_enabled():
        return None
    h = hashlib.sha1()
    for module in (packed_ir, narrow_ir):
        with open(module.__file__, "rb") as f:
            h.update(f.read())
    for part in (GEOMETRY, BLOCK_MACS, scheduler.RUN_SYMBOL, scheduler.SIZE_SYMBOL, ll.get_host_cpu_name(),
                 ll.get_host_cpu_features().flatten(), tm.triple, ll.llvm_version_info, llvmlite.__version__):
        h.update(repr(part).encode() + b"\0")
    try:
        d = os.path.join(cfg.cache_dir(), "packed")
        cfg.secure_dir(cfg.cache_dir())
        cfg.secure_dir(d)
    except (OSError, cfg.UnsafeCache):
        return None
    return os.path.join(d, h.hexdigest()[:24] + ".o")


def _read(path):
    """The object code saved at path (behind its SHA-1), or None: missing, not ours,
    writable by others, or not what was written (then it is compiled and saved again)."""
    from ... import runtime_config as cfg
    try:
        with open(path, "rb") as f:
            cfg.check_owner(path, os.fstat(f.fileno()))
            data = f.read()
    except (OSError, cfg.UnsafeCache):
        return None
    digest, obj = data[:20], data[20:]
    return obj if obj and hashlib.sha1(obj).digest() == digest else None


def _write(path, obj):
    """Save obj behind its SHA-1, atomically (a reader sees the old file or the new)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".o")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(hashlib.sha1(obj).digest() + obj)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass             # not saved: the next process compiles it again


def _float32_array(t, ndim):
    return isinstance(t, types.Array) and t.ndim == ndim and t.dtype == types.float32


def _unpack(context, builder, t, v):
    """(data pointer, shape..., strides in elements...) of an array value."""
    arr = context.make_array(t)(context, builder, v)
    four = lir.Constant(lir.IntType(64), 4)
    return ([builder.bitcast(arr.data, lir.FloatType().as_pointer())]
            + cgutils.unpack_tuple(builder, arr.shape, t.ndim)
            + [builder.sdiv(s, four) for s in cgutils.unpack_tuple(builder, arr.strides, t.ndim)])


def _call(builder, name, ret, values):
    fnty = lir.FunctionType(ret, [v.type for v in values])
    return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), values)


@intrinsic
def pack_call(typingctx, w, transposed, out):
    """Fill out (panels, K, PANEL), C-contiguous, with op(w) (w.T where transposed),
    zero past its last column. The caller checks out's shape."""
    if not start():
        raise TypingError(f"pack_call: {state['why']}")
    if not (_float32_array(w, 2) and _float32_array(out, 3) and out.layout == "C"):
        raise TypingError(f"pack_call: a 2-D float32 array and a C-contiguous 3-D one, got {w}, {out}")

    def codegen(context, builder, sig, args):
        wv = _unpack(context, builder, sig.args[0], args[0])
        ov = _unpack(context, builder, sig.args[2], args[2])
        flag = context.cast(builder, args[1], sig.args[1], types.int64)
        _call(builder, packed_ir.PACK_NAME, lir.VoidType(), wv[:5] + [flag, ov[0], ov[1]])
        return context.get_dummy_value()
    return types.none(w, transposed, out), codegen


@intrinsic
def panel_call(typingctx):
    """The panel width of this process's geometry, asked at run time (a constant would be
    kept by a function cached under another geometry)."""
    if not start():
        raise TypingError(f"panel_call: {state['why']}")

    def codegen(context, builder, sig, args):
        return _call(builder, packed_ir.PANEL_NAME, lir.IntType(64), [])
    return types.int64(), codegen


@intrinsic
def pgemm_call(typingctx, a, packed, out, addend, bias, acc):
    """out = a @ W, plus addend with acc (addend may be out itself), plus the row `bias`
    unless it is empty, for W packed by pack_call: 0, or 1 when the shapes do not make
    the product. a, out and addend: 2-D float32, any strides; bias: 1-D, contiguous."""
    if not start():
        raise TypingError(f"pgemm_call: {state['why']}")
    if not (_float32_array(a, 2) and _float32_array(packed, 3) and packed.layout == "C"
            and _float32_array(out, 2) and _float32_array(addend, 2) and _float32_array(bias, 1)
            and bias.layout == "C"):
        raise TypingError(f"pgemm_call: float32 arrays a (2-D), packed (3-D, C-contiguous), out "
                          f"and addend (2-D), bias (1-D, contiguous), got {a}, {packed}, {out}, "
                          f"{addend}, {bias}")

    def codegen(context, builder, sig, args):
        av = _unpack(context, builder, sig.args[0], args[0])
        pv = _unpack(context, builder, sig.args[1], args[1])
        ov = _unpack(context, builder, sig.args[2], args[2])
        dv = _unpack(context, builder, sig.args[3], args[3])
        bv = _unpack(context, builder, sig.args[4], args[4])
        flag = context.cast(builder, args[5], sig.args[5], types.int64)
        return _call(builder, packed_ir.GEMM_NAME, lir.IntType(32),
                     av[:5] + pv[:4] + ov[:5] + dv[:5] + bv[:2] + [flag])
    return types.int32(a, packed, out, addend, bias, acc), codegen


@intrinsic
def pack_pgemm_call(typingctx, a, w, transposed, scratch, out, addend, bias, acc):
    """pgemm_call's product with W = op(w) (w.T where transposed), which the product's
    blocks pack into `scratch` (panels, K, PANEL; C-contiguous) as they go: 0, or 1 when
    the shapes do not make the product. w: 2-D float32, any strides."""
    if not start():
        raise TypingError(f"pack_pgemm_call: {state['why']}")
    if not (_float32_array(a, 2) and _float32_array(w, 2) and _float32_array(scratch, 3)
            and scratch.layout == "C" and _float32_array(out, 2) and _float32_array(addend, 2)
            and _float32_array(bias, 1) and bias.layout == "C"):
        raise TypingError(f"pack_pgemm_call: float32 arrays a and w (2-D), scratch (3-D, C-contiguous), "
                          f"out and addend (2-D), bias (1-D, contiguous), got {a}, {w}, {scratch}, {out}, "
                          f"{addend}, {bias}")

    def codegen(context, builder, sig, args):
        av, wv, sv, ov, dv, bv = (_unpack(context, builder, sig.args[i], args[i]) for i in (0, 1, 3, 4, 5, 6))
        tr = context.cast(builder, args[2], sig.args[2], types.int64)
        flag = context.cast(builder, args[7], sig.args[7], types.int64)
        return _call(builder, packed_ir.PACKING_NAME, lir.IntType(32),
                     av[:5] + wv[:5] + [tr] + sv[:4] + ov[:5] + dv[:5] + bv[:2] + [flag])
    return types.int32(a, w, transposed, scratch, out, addend, bias, acc), codegen


@intrinsic
def narrow_call(typingctx, a, b, out, ta, tb, acc):
    """out = op(a) @ op(b) (out += ... with acc) through flowjit_narrow (narrow_ir.py): 0
    when done, 1 when the shapes do not make the product, narrow_ir.NOT_HERE when it is
    not a product that module does (then gemm_call does it). 2-D float32, any strides."""
    if not start():
        raise TypingError(f"narrow_call: {state['why']}")
    if not all(_float32_array(t, 2) for t in (a, b, out)):
        raise TypingError(f"narrow_call: three 2-D float32 arrays, got {a}, {b}, {out}")

    def codegen(context, builder, sig, args):
        values = []
        for i in range(3):
            values += _unpack(context, builder, sig.args[i], args[i])
        values += [context.cast(builder, v, t, types.int64) for t, v in zip(sig.args[3:], args[3:])]
        return _call(builder, narrow_ir.NAME, lir.IntType(32), values)
    return types.int32(a, b, out, ta, tb, acc), codegen
