"""Numba CPU code generation: Python source for loop kernels and for the entry function.

Every loop group becomes a kernel whose source depends only on its *structure* (op
sequence, dtypes, ranks, broadcast pattern): sizes, offsets and constants are
arguments, so equal kernels are compiled once and shared by every graph, layer and
process (the disk cache is keyed by the source text). The entry function holds one
line per step (allocate, call kernel / BLAS, view) and is compiled with `numba.njit`
as a whole, so a call costs one dispatch.
"""
import hashlib
import os
import re
from dataclasses import dataclass, field

from ...ir.registry import REGISTRY
from ...ops.control import scan_results, stacked_outputs
from ...passes.inplace import inplace_effects
from ... import dtypes as D
from ...ir import scalar as S
from ...ir.shapes import hint, is_one, same
from . import entry_loops, inline_math
from ..entry import entry_params, results_read, scan_body_names, scan_result_name, size_lines
from ..loops import (analyse_loop, dim_src, index_term, int_arg, load_lines, node_expr, prod_src,
                     shape_src)
from ..pyexpr import const_src, npt, render as render_expr, sfx
from . import conv_lowering, lowerings  # noqa: F401  (attach the opaque ops' lowerings)
from . import pool
from .scalar import ORDERED, WIDE_VECTORS

PAR_MIN = int(os.environ.get("FLOWJIT_PAR_MIN", 1 << 18))   # elements: below, a loop runs serially
# Loops that can run on the BLAS thread pool (pool.py) pay off much earlier: handing
# work to a worker still awake after a GEMM costs microseconds. Such a kernel compiles a
# task function and a launcher too (about 0.1 s more on a cold cache since the launcher's
# records are built by one intrinsic, pool.pool_launch), so smaller loops stay serial.
POOL_MIN = int(os.environ.get("FLOWJIT_POOL_MIN", 1 << 16))
# A loop that only moves data (a copy through transposes and slices, a fill) is bound by
# memory: a second thread saves a fraction of a copy that takes ~0.1-0.3 ms below this
# size, and the pooled kernel costs ~0.1-0.2 s more to compile (the LSTM step's cold
# compile had five such kernels)
MOVE_POOL_MIN = max(POOL_MIN, 1 << 20)
# A loop body's kernel with much work per element is worth the pool from fewer
# elements: POOL_MIN is sized for an element costing about three loads or stores (a
# binary op), and a range-reduced function (exp, tanh, sigmoid, log) costs about four
# of those. An LSTM cell (64 x 256 elements, five of them, a dozen loads and stores)
# took 53 us on one thread; pooled, the training step ran 5% faster (in one process,
# taking turns). Only in a loop body, which runs it once per step: a pooled kernel
# costs 0.1-0.3 s more to compile (its launcher), which a kernel run once per call
# saving tens of microseconds would not repay.
POOL_WORK_PER_ELEMENT = 3
TRANSCENDENTAL_WORK = 4
# A loop of at least this many elements (traced) asks for AVX-512's 16-float vectors
# where the CPU has them (scalar.wide_vectors). Only big loops: they cost LLVM more to
# compile (the LSTM step's cold first call 1.73-2.15 s -> 1.96-2.49 s with every loop
# wide, in turns over three cold processes each), and only big ones gained (the fused
# loss+grad's 4M elements 1.54x; the MLP's, autoencoder's, CNN's and LSTM's loops,
# bound by their loads and stores, level).
WIDE_MIN = 1 << 20
# ... and so does a loop body's kernel from 2^14 elements when it calls the math
# library (exp, tanh, sigmoid, log): run once a step, its compile is paid once for many
# runs, and its work is the functions' arithmetic, not loads and stores. An LSTM's cell
# (64 x 256 elements, three sigmoids and two tanhs): 44.6 -> 34.6 us on two threads,
# 79.5 -> 61.0 on one (the generated kernels in turns); its backward (products and
# sums) ran the same either way, so it stays at 8 floats.
WIDE_MATH_MIN = 1 << 14
# Generated kernels are called from Python or from compiled entries, never through C
# function pointers: Numba's C wrapper of each would be compiled for nothing (5-10 ms).
NJIT_FLAGS = "no_cfunc_wrapper=True, "
SUM_BLOCK = 1024     # float32 terms summed in float32 before a float64 add (see the loop kernels)


NP_MATH = ("sqrt", "sin", "cos", "floor", "ceil")     # Numba's own versions vectorise


def math_name(ordered):
    """The CPU name of a scalar math call (backends/cpu/scalar.py). ordered: the loop is
    not reassociated, so float32 range reductions take their exact-order versions."""
    def name(e):
        if e.name in NP_MATH:
            return "np." + e.name
        if e.name == "abs":
            return "abs"
        fn = f"{e.name}_{sfx(e.dtype)}"
        return fn + "_ordered" if ordered and fn in ORDERED else fn
    return name


def expr_src(e, ordered=False):
    return render_expr(e, math_name(ordered))


class KernelSpec:
    """A generated kernel: its source, name, and how the entry calls it. threads: it
    may run Numba's parallel loops (so Numba's thread pool must be started first)."""

    def __init__(self, name, source, call_args, threads=False, pooled=False):
        self.name, self.source, self.call_args, self.threads = name, source, call_args, threads
        self.pooled = pooled      # it may split its rows over the BLAS pool (pool.py)


def _hash(text):
    return hashlib.sha1(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------
# loop kernels
# ----------------------------------------------------------------------------------
def gen_loop(g, grp, bufname, alias=None, repeated=False, placed=None):
    """Kernel source + call for one loop group. bufname(node id) -> entry variable;
    alias: store node id -> the variable (arg node) whose buffer it is written over;
    repeated: the kernel is in a loop body (it runs once per step of the loop);
    placed: store node id -> Placement (it is stored into a slice of a bigger buffer)."""
    return LoopKernel(g, grp, bufname, alias, repeated, placed).spec()


@dataclass
class Placement:
    """Where a loop kernel stores a value that only a concatenation reads: straight into
    its slice of the concatenation's buffer, at `offset` along `axis`."""
    target: str         # the concatenation's buffer (a C-contiguous array expression)
    shape: tuple        # its shape
    axis: int
    offset: object      # the value's first index along axis


@dataclass
class Reduction:
    """One reduction of a loop group, as its kernel accumulates it."""
    param: str          # its output parameter, R<j>
    kept: list          # the coalesced loops its result keeps (its output's dims)
    emit: dict          # the op's emit table (identity, update, kind)
    dtype: object       # its result dtype
    kind: str           # "sum", "prod", "max", "min", ...
    wide: bool          # a float32 sum over the inner loops, accumulated in float64
    init: str           # the accumulator's first value (float64 when wide)
    init32: str         # the same in the result dtype (a float32 block partial's)
    term: str           # the value each iteration folds in (widened when wide)
    term32: str         # the same, not widened


def _passed_as_one(n):
    """Whether node n is an input's or constant's 0-d value, which the executor passes
    as an array of shape (1,) (devices._host_argument)."""
    return not n.shape and n.op in ("arg", "const")


def reshaped(var, extents, shape=()):
    """Call argument: entry variable `var` viewed with these extents (at least one), or
    `var` itself where its shape is already those extents. Every buffer variable holds a
    C-contiguous array of its value's shape, so a reshape to that shape changes nothing,
    and in compiled code each one cost Numba about 25 ms to compile: an LSTM backward's
    loop passed its cell kernel 21 of them. shape "one": `var` is an input or constant
    of one element, which the executor passes with shape (1,)."""
    if shape == "one":
        if not extents:
            return var
    elif shape and [dim_src(d) for d in shape] == list(extents):
        return var
    return f"{var}.reshape(({''.join(e + ', ' for e in extents) or '1, '}))"


class LoopKernel:
    """The kernel of one loop group, built in steps from the group's analysis: the
    parameters with the loads, the body, the stores, the reductions, then the schedule
    (serial, Numba's parallel loops, or row blocks on the BLAS pool). The source only
    depends on that structure; `spec()` renders it with its final names."""

    def __init__(self, g, grp, bufname, alias=None, repeated=False, placed=None):
        self.nodes, self.grp, self.bufname = g.nodes, grp, bufname
        self.placed = {s: pl for s, pl in (placed or {}).items() if s in grp.stores}
        # a placed store's axis is a loop of its own: the store offsets it
        self.an = analyse_loop(g, grp, apart={pl.axis for pl in self.placed.values()})
        self.C = self.an.C
        self.ivar = [f"i{c}" for c in range(self.C)]
        self.randoms = [i for i in grp.nodes if self.nodes[i].op == "random"]
        self._reduction_layout()
        self.params, self.call = [], []
        self.arrays = {}        # array parameter -> (dtype name, rank)
        # every array parameter is a C-contiguous buffer of a dtype a pool task can
        # rebuild from an address (pool.POINTER_TYPES)
        self.poolable = True
        self.repeated = repeated
        self.names = {}         # node id -> its variable in the kernel
        for c in range(self.C):
            self.params.append(f"n{c}")
            self.call.append(int_arg(prod_src(self._dims(c))))
        self._loads()
        body = self._body()
        epi_body = self._epilogue()
        self._stores(alias)
        self._reductions()
        self._schedule(body + epi_body)
        # (without reassociation the operation order is kept: float32 range reduction is exact)
        ordered = "reassoc" not in self.fastmath
        self.body = [f"{x} = {expr_src(e, ordered)}" for x, e in body]
        self.epi_body = [f"{x} = {expr_src(e, ordered)}" for x, e in epi_body]

    # -- analysis, parameters and loads ----------------------------------------------
    def _dims(self, c):
        return [self.grp.shape[d] for d in self.an.cdims[c]]

    def _extents(self, loops):
        return [prod_src(self._dims(c)) for c in loops]

    def _at(self, p, loops):
        """Element of array parameter p at the loop variables of `loops`."""
        return f"{p}[{', '.join(self.ivar[c] for c in loops) or '0'}]"

    def _shape(self, node_id):
        """The shape `reshaped` compares extents with ("one": see _passed_as_one)."""
        n = self.nodes[node_id]
        return "one" if _passed_as_one(n) else n.shape

    def _array_param(self, p, node_id, ndim):
        dt = self.nodes[node_id].dtype.name
        self.arrays[p] = (dt, max(ndim, 1))
        if dt not in pool.POINTER_TYPES:
            self.poolable = False

    def _reduction_layout(self):
        """The coalesced loops each reduction runs over. Kind A: every reduction runs over
        the same trailing loops (softmax rows, a loss): one accumulator per row, loops
        k_split.. innermost, then the epilogue. Otherwise (column sums) the results are
        updated in their outputs as the loops go."""
        C, grp = self.C, self.grp
        self.red_c = {r: sorted({self.an.cof[a] for a in ax if a in self.an.cof})
                      for r, ax in self.an.red_axes.items()}
        self.kind_a, self.k_split = False, C
        if grp.reduces:
            sets = {tuple(v) for v in self.red_c.values()}
            if len(sets) == 1:
                rs = list(sets.pop())
                if rs == list(range(C - len(rs), C)):
                    self.kind_a, self.k_split = True, C - len(rs)
        if self.an.epilogue and not self.kind_a:
            raise AssertionError("fusion gave a reduction epilogue to a non-trailing reduction")
        # the loops a kind-A row keeps: where its epilogue stores
        first = next(iter(self.red_c.values())) if self.red_c else []
        self.row_loops = [c for c in range(C) if c not in first]

    def _loads(self):
        """A parameter L<j> per load, read into v<j>. Loads that only the epilogue reads
        are read after the row loop; a scalar is read once, before the loops."""
        self.hoisted, self.loads, self.epi_loads = [], [], []
        starts = 0
        for j, lf in enumerate(self.an.leaves):
            p = f"L{j}"
            self.params.append(p)
            code = []
            if lf["identity"]:
                self._plain_load(j, p, lf, code)
            else:
                starts = self._chain_load(j, p, lf, code, starts)
            self.names[lf["vid"]] = f"v{j}"
            if lf["vid"] in self.an.epi_inputs:
                self.epi_loads.extend(code)
            if lf["vid"] in self.an.body_inputs:
                self.loads.extend(code)

    def _plain_load(self, j, p, lf, code):
        """A buffer read as it is: a C-contiguous view indexed by the loops it varies along."""
        cs = sorted({self.an.cof[d] for d in lf["present"]})
        ext = self._extents(cs)
        self.call.append(reshaped(self.bufname(lf["load"].base), ext, self._shape(lf["load"].base)))
        self._array_param(p, lf["load"].base, len(ext))
        if lf["scalar"]:
            self.hoisted.append(f"    v{j} = {p}[0]")
        else:
            code.append(f"v{j} = {p}[{', '.join(self.ivar[c] for c in cs)}]")

    def _chain_load(self, j, p, lf, code, starts):
        """A read through transposes, slices and pads: the buffer as it is (any rank),
        start offsets P<k> as extra parameters. Returns the next P number. The first
        loop's variable is read as a signed integer: in a pool task's single loop it is
        unsigned (_loop_header), and an unsigned index plus a signed start is a
        float in Numba's typing; everywhere else the cast is a no-op."""
        self.call.append(self.bufname(lf["load"].base))
        if lf["idx"]:
            self._array_param(p, lf["load"].base, len(lf["idx"]))
        else:
            self.poolable = False
        exprs = []
        for d, s0, s1 in lf["idx"]:
            e, starts = index_term(d, s0, s1, self.an.cof, self.params, self.call, starts,
                                   loop_var=lambda c: "np.int64(i0)" if c == 0 else f"i{c}")
            # a start plus the loop term is never negative where no pad guards it, but
            # Numba wraps a negative signed index around (idx + shape): LLVM then cannot
            # see the address is affine and gathers element by element (the LSTM cell
            # kernel reading its gates as slices ran 4x slower); an unsigned index is not
            # wrapped
            if e.startswith("P") and len(exprs) not in lf["guards"]:
                e = f"np.uint64({e})"
            exprs.append(e)
        bounds = [f"{p}.shape[{k}]" for k in range(len(exprs))]
        load_lines(j, p, lf, exprs, bounds, lambda ex: ", ".join(ex) or "0", self.nodes, code)
        return starts

    # -- body, epilogue, stores, reductions -----------------------------------------
    def _body(self):
        """(variable, scalar expression) per elementwise node of the loop body; first
        `lin`, the flat index, when random numbers are drawn (counter-based)."""
        body = []
        if self.randoms:
            lin = self.ivar[0] if self.C else "0"
            for c in range(1, self.C):
                lin = f"({lin}) * n{c} + {self.ivar[c]}"
            body.append(("lin", S.var(lin)))
        for local, i in enumerate(self.grp.nodes):
            n = self.nodes[i]
            op = REGISTRY[n.op]
            if op.kind == "reduce" or i in self.an.epilogue:
                continue
            args = [S.var(a) for a in self._operands(i)]
            body.append((f"x{local}", op.emit(args, n.attrs, [self.nodes[p].dtype for p in n.inputs], n.dtype)))
            self.names[i] = f"x{local}"
        return body

    def _operands(self, i):
        """The variables node i reads (iota reads its loop index, random the flat index)."""
        n, nodes, names = self.nodes[i], self.nodes, self.names
        if n.op == "iota":
            d = n.attrs["axis"] + len(self.grp.shape) - len(n.shape)
            return [self.ivar[self.an.cof[d]] if d in self.an.cof else "0"]
        if n.op == "random":
            return [names[n.inputs[0]], "lin"]
        missing = [p for p in n.inputs if p not in names]
        if missing:       # e.g. a reduction of this group read inside its own loop
            raise AssertionError(f"fused loop computes %{i}={n.op} from %{missing[0]}="
                                 f"{nodes[missing[0]].op}, which the loop body does not have "
                                 f"(a fusion bug): {' '.join(nodes[k].op for k in self.grp.nodes)}")
        return [names[p] for p in n.inputs]

    def _epilogue(self):
        """(variable, expression) per epilogue node: computed once per row from the
        row's reduction results r<j>."""
        for j, r in enumerate(self.grp.reduces):
            self.names[r] = f"r{j}"
        epi = []
        for local, i in enumerate(self.grp.nodes):
            if i in self.an.epilogue:
                epi.append((f"x{local}", node_expr(self.nodes[i], self.names, self.nodes)))
                self.names[i] = f"x{local}"
        return epi

    def _stores(self, alias):
        """A parameter O<j> per stored value, or none for an in-place variable update:
        that is stored through the parameter its old value was loaded from (the same
        array passed twice makes LLVM's runtime alias check fail, and the loop falls
        back to scalar code: 5x slower on an optimizer update)."""
        self.stores, self.epi_stores = [], []
        same_param = {}
        for j, lf in enumerate(self.an.leaves):
            if lf["identity"] and set(lf["present"]) >= set(self.an.loop_dims):
                same_param.setdefault(lf["load"].base, f"L{j}")
        everywhere = list(range(self.C))
        for j, s in enumerate(self.grp.stores):
            in_epilogue = s in self.an.epilogue
            if alias and s in alias and not in_epilogue and alias[s] in same_param:
                self.stores.append(f"{self._at(same_param[alias[s]], everywhere)} = {self.names[s]}")
                continue
            p = f"O{j}"
            self.params.append(p)
            if s in self.placed:
                self._placed_store(j, s, p)
                continue
            loops = self.row_loops if in_epilogue else everywhere
            ext = self._extents(loops)
            self.call.append(reshaped(self.bufname(s), ext, self._shape(s)))
            self._array_param(p, s, len(ext))
            (self.epi_stores if in_epilogue else self.stores).append(f"{self._at(p, loops)} = {self.names[s]}")

    def _placed_store(self, j, s, p):
        """Store s into its slice of a concatenation's buffer (Placement), viewed as
        (before the axis, the axis, after it): the group's loops before the axis
        linearised, the axis's loop plus the offset Q<j>, the loops after it
        linearised. Unsigned indices, as for slice loads (_chain_load)."""
        pl = self.placed[s]
        ax, R = pl.axis, len(self.grp.shape)

        def flat(dims, signed=False):
            # (a pool task's first loop variable may be unsigned: signed where it is added to)
            loops = sorted({self.an.cof[d] for d in dims if d in self.an.cof})
            if len(loops) == 1:
                return "np.int64(i0)" if signed and loops[0] == 0 else self.ivar[loops[0]]
            e = ""
            for c in loops:
                v = "np.int64(i0)" if c == 0 else self.ivar[c]
                e = f"({e}) * n{c} + {v}" if e else v
            return (e if signed else f"np.uint64({e})") if e else "0"
        ext, idx = [], []
        if ax > 0:
            ext.append(prod_src(pl.shape[:ax]))
            idx.append(flat(range(ax)))
        ext.append(dim_src(pl.shape[ax]))
        idx.append(f"np.uint64(Q{j} + {flat([ax], signed=True)})")
        if ax < R - 1:
            ext.append(prod_src(pl.shape[ax + 1:]))
            idx.append(flat(range(ax + 1, R)))
        self.call.append(reshaped(pl.target, ext, pl.shape))
        self._array_param(p, s, len(ext))
        self.params.append(f"Q{j}")
        self.call.append(int_arg(dim_src(pl.offset)))
        self.stores.append(f"{p}[{', '.join(idx)}] = {self.names[s]}")

    def _reductions(self):
        """A parameter R<j> per reduction, shaped by the loops it keeps. A float32 sum of
        kind A accumulates in float64 (wide)."""
        self.reds = []
        for j, r in enumerate(self.grp.reduces):
            p = f"R{j}"
            self.params.append(p)
            n = self.nodes[r]
            kept = [c for c in range(self.C) if c not in self.red_c[r]]
            ext = self._extents(kept)
            self.call.append(reshaped(self.bufname(r), ext, self._shape(r)))
            self._array_param(p, r, len(ext))
            em = REGISTRY[n.op].emit
            wide = em["kind"] == "sum" and n.dtype.name == "float32" and self.kind_a
            ident = em["identity"](n.dtype)
            val = self.names.get(n.inputs[0]) or f"x{self.grp.nodes.index(n.inputs[0])}"
            self.reds.append(Reduction(
                param=p, kept=kept, emit=em, dtype=n.dtype, kind=em["kind"], wide=wide,
                init=const_src(ident, D.float64 if wide else n.dtype), init32=const_src(ident, n.dtype),
                term=f"np.float64({val})" if wide else val, term32=val))

    # -- schedule ----------------------------------------------------------------------
    def _schedule(self, exprs):
        """Where the loops run (pooled, parallel) and the fastmath flags; exprs: the
        body's and epilogue's (variable, expression) pairs."""
        C, grp, nodes = self.C, self.grp, self.nodes
        total_hint = 1
        for d in grp.shape:
            total_hint *= max(hint(d), 1)
        # On the BLAS pool a kernel's rows are split into blocks. A reduction that keeps the
        # first loop leaves each block its own outputs; one that sums over it (a loss, a
        # bias gradient) gives each block its own partial result, combined after the run
        # (so no epilogue may read the result inside the loop nest).
        self.partials = bool(grp.reduces) and all(0 in self.red_c[r] for r in grp.reduces)
        rows_ok = not grp.reduces or (self.kind_a and self.k_split > 0) or (self.partials and not self.an.epilogue)
        # (iota and random read the loop index as a value: it stays signed, off the pool)
        moves_only = not grp.reduces and all(nodes[i].op == "broadcast_to" for i in grp.nodes)
        self.pool_min = pool_min(exprs, len(grp.loads) + len(grp.stores) + len(grp.reduces)) \
            if self.repeated else POOL_MIN
        self.pooled = self.poolable and not self.randoms and not any(nodes[i].op == "iota" for i in grp.nodes) \
            and C > 0 and rows_ok and total_hint >= (MOVE_POOL_MIN if moves_only else self.pool_min) \
            and pool.available()
        # (a prange over a reduced loop itself needs accumulators Numba recognises as
        # reductions: the += and *= of sums and products)
        scalar_ok = all(r.kind in ("sum", "prod") for r in self.reds)
        self.parallel = not self.pooled and total_hint >= max(PAR_MIN, MOVE_POOL_MIN if moves_only else 0) \
            and C > 0 and (
            not grp.reduces or (self.kind_a and (self.k_split > 0 or scalar_ok)))
        self.wide = WIDE_VECTORS and (total_hint >= WIDE_MIN or (      # 512-bit vectors (scalar.wide_vectors)
            self.repeated and total_hint >= WIDE_MATH_MIN and _math_calls(exprs) > 0))
        has_f64_trans = any(S.uses_transcendental(e, "float64") for _, e in exprs)
        # reassociation lets LLVM vectorise reductions over the innermost loops (kind A:
        # one accumulator across iterations); nothing else needs it: reductions over outer
        # loops (column sums) vectorise across the kept inner dims as they are, and then the
        # float32 exp/tanh/sigmoid can stay in float32 (8 lanes). Float64 Cody-Waite range
        # reduction must not be reassociated.
        self.fastmath = {"nsz", "contract"} | (
            {"reassoc"} if grp.reduces and self.kind_a and not has_f64_trans else set())
        # a float32 sum whose innermost loop is reduced adds blocks of at most SUM_BLOCK
        # terms in float32 (vectorised 8 wide) and the block sums in float64: as
        # accurate as pairwise summation, about twice as fast as widening every term
        self.blocked = self.kind_a and self.k_split < C and any(r.wide for r in self.reds)

    def options(self):
        """The @njit options besides cache and error_model."""
        return "fastmath={" + ", ".join(repr(x) for x in sorted(self.fastmath)) + f"}}, parallel={self.parallel}"

    # -- the loop nest -------------------------------------------------------------------
    def _loop_nest(self, par=False, rows=False):
        """The loops, at one indent; par: the first one is a prange; rows: it runs over
        rows row_lo..row_hi only (the loop nest of a pool task)."""
        out = (["    wide_vectors()"] if self.wide else []) + list(self.hoisted)
        if self.grp.reduces and not self.kind_a:
            out += self._init_outputs()
        depth = "    "
        for c in range(self.C):
            if self.kind_a and c == self.k_split:
                out += self._init_accumulators(depth)
            header, depth = self._loop_header(c, depth, par, rows)
            out += header
        if self.kind_a and self.k_split == self.C:
            out += self._init_accumulators(depth)
        out += [depth + line for line in self.loads + self.body + self.stores]
        out += self._accumulate(depth)
        if self.blocked:
            out += [f"{depth[:-4]}acc{j} += np.float64(pacc{j})" for j, r in enumerate(self.reds) if r.wide]
        if self.kind_a:
            out += self._row_results("    " * (self.k_split + 1))
        return out

    def _init_outputs(self):
        """Column reductions: their outputs set to the identity before the loops."""
        out = []
        for r in self.reds:
            qv = [f"q{c}" for c in r.kept]
            ind = "    "
            for c, v in zip(r.kept, qv):
                out.append(f"{ind}for {v} in range(n{c}):")
                ind += "    "
            out.append(f"{ind}{r.param}[{', '.join(qv) or '0'}] = {r.init}")
        return out

    def _init_accumulators(self, ind):
        return [f"{ind}acc{j} = {r.init}" for j, r in enumerate(self.reds)]

    def _init_block_partials(self, ind):
        return [f"{ind}pacc{j} = {r.init32}" for j, r in enumerate(self.reds) if r.wide]

    def _loop_header(self, c, depth, par, rows):
        """The `for` line(s) of loop c at `depth`, and the indent of its body."""
        inner = depth + "    "
        if rows and c == 0 and not (self.blocked and self.C == 1):
            if self.C > 1:
                # an outer loop: signed. Its wraparound test is the same for the whole
                # inner loop, and an unsigned i0 made LLVM vectorise the inner loop
                # worse (the LSTM's backward cell, 64x256: 50 -> 28 us on one thread)
                return [f"{depth}for {self.ivar[c]} in range(row_lo, row_hi):"], inner
            # the innermost loop: unsigned. An index that might be negative gets Numba's
            # wraparound test, and the loop is no longer vectorised (8x slower)
            return [f"{depth}for {self.ivar[c]} in range(np.uint64(row_lo), np.uint64(row_hi)):"], inner
        if rows and c == 0:       # one loop, a blocked float32 sum: blocks of this row range
            return ([f"{depth}for b0 in range((row_hi - row_lo + {SUM_BLOCK - 1}) // {SUM_BLOCK}):"]
                    + self._init_block_partials(inner)
                    + [f"{inner}for i0 in range(np.uint64(row_lo + b0 * {SUM_BLOCK}), "
                       f"np.uint64(min(row_hi, row_lo + (b0 + 1) * {SUM_BLOCK}))):"]), inner + "    "
        rng = "prange" if (par and c == 0) else "range"
        if self.blocked and c == self.C - 1:
            # (prange takes unit steps only: count blocks, not their starts.) The index is
            # the block's start plus a count from 0: from `range(start, stop)` LLVM could
            # not tell the index is never negative, kept Numba's wraparound test and
            # vectorised the loads as gathers (the autoencoder's loss, 256x784: 360 ->
            # 150 us on one thread)
            body = inner + "    "
            return ([f"{depth}for b{c} in {rng}((n{c} + {SUM_BLOCK - 1}) // {SUM_BLOCK}):"]
                    + self._init_block_partials(inner)
                    + [f"{inner}for j{c} in range(min({SUM_BLOCK}, n{c} - b{c} * {SUM_BLOCK})):",
                       f"{body}{self.ivar[c]} = b{c} * {SUM_BLOCK} + j{c}"]), body
        return [f"{depth}for {self.ivar[c]} in {rng}(n{c}):"], inner

    def _accumulate(self, ind):
        """Each reduction's step in the innermost loop: into its accumulator (kind A; a
        block partial when blocked) or into its output element (column reductions)."""
        out = []
        for j, r in enumerate(self.reds):
            if self.kind_a and self.blocked and r.wide:
                out.append(f"{ind}pacc{j} += {r.term32}")
            elif self.kind_a and r.kind == "sum":
                out.append(f"{ind}acc{j} += {r.term}")
            elif self.kind_a and r.kind == "prod":
                out.append(f"{ind}acc{j} *= {r.term}")
            elif self.kind_a:
                out.append(f"{ind}acc{j} = {red_update(r, f'acc{j}', r.term)}")
            else:
                tgt = self._at(r.param, r.kept)
                out.append(f"{ind}{tgt} = {red_update(r, tgt, r.term)}")
        return out

    def _row_results(self, ind):
        """Kind A, after a row's reduced loops: the results r<j> stored, then the epilogue."""
        out = []
        for j, r in enumerate(self.reds):
            conv = f"{npt(r.dtype)}(acc{j})" if r.wide else f"acc{j}"
            out += [f"{ind}r{j} = {conv}", f"{ind}{self._at(r.param, r.kept)} = r{j}"]
        return out + [ind + line for line in self.epi_loads + self.epi_body + self.epi_stores]

    # -- assembly ------------------------------------------------------------------------
    def _kernel_lines(self, name, key):
        """The kernel function. Pooled: row blocks dispatched to the pool's task, else
        (below the threshold) one block, which the task runs in this thread: one compiled
        copy of the loop nest, not two. Parallel: a prange nest for big loops and the
        serial nest for small ones."""
        params = ", ".join(self.params)
        lines = [f"def {name}({params}):"]
        if self.pooled:
            lines += pool_dispatch(self.params, self.arrays, self.C, self.reds if self.partials else [], key,
                                   self.pool_min)
        elif self.parallel:
            lines.append(f"    if {' * '.join(f'n{c}' for c in range(self.C))} >= {PAR_MIN}:")
            lines.extend("    " + line for line in self._loop_nest(par=True))
            lines.append("        return")
            lines.extend(self._loop_nest())
        else:
            lines.extend(self._loop_nest())
        if len(lines) == 1:
            lines.append("    return")
        return lines

    def source(self, name, key, decorator):
        """The kernel's module text: kernel `name`; when pooled, first the pool task
        `<name>_task` holding the loop nest, registered under `key`. decorator: the line
        above the kernel ("" for the text the name is hashed from)."""
        kernel = decorator + "\n".join(self._kernel_lines(name, key)) + "\n"
        if not self.pooled:
            return kernel
        fastmath = "{" + ", ".join(repr(x) for x in sorted(self.fastmath)) + "}"
        return (pool.task_source(key, f"{name}_task", self.params, self.arrays,
                                        self._loop_nest(rows=True), fastmath)
                + "\n\n" + kernel)

    def _merge_repeated_arrays(self):
        """One parameter per array the entry passes: an LSTM cell's backward got the same
        constant 1.0 five times and wrote four gradients into one concatenation's buffer
        through four parameters, and each array parameter cost its kernel ~10 ms to
        compile (unpacking it in the launcher, its Python wrapper and its pool task).
        Returns {dropped parameter: the one kept}, for renaming in the source."""
        kept, merged = {}, {}
        for p, arg in zip(self.params, self.call):
            if p not in self.arrays:
                continue
            first = kept.setdefault((arg, self.arrays[p]), p)
            if first != p:
                merged[p] = first
        if merged:
            pairs = [(p, a) for p, a in zip(self.params, self.call) if p not in merged]
            self.params, self.call = [p for p, _ in pairs], [a for _, a in pairs]
            for p in merged:
                del self.arrays[p]
        return merged

    def _rendered(self, name, key, decorator, merged):
        text = self.source(name, key, decorator)
        if not merged:
            return text
        return re.sub(r"\b(" + "|".join(map(re.escape, merged)) + r")\b", lambda m: merged[m.group(1)], text)

    def spec(self):
        """KernelSpec named k_<hash of the options and the source written with
        placeholder names>; the pool task key is the same hash."""
        merged = self._merge_repeated_arrays()
        opts = self.options()
        key = _hash(opts + self._rendered("KERNEL", "__KEY__", "", merged))
        name = f"k_{key}"
        decorator = f"@njit(cache=CACHE, error_model='numpy', {NJIT_FLAGS}{opts})\n"
        ops = " ".join(self.nodes[i].op for i in self.grp.nodes) or "copy"
        source = f"# fused loop: {ops}\n" + self._rendered(name, key, decorator, merged)
        source = inline_math.expand(source)
        return KernelSpec(name, source, self.call, threads=self.parallel, pooled=self.pooled)


def red_update(red, acc, v):
    """The accumulation step of a Reduction. A float max/min propagates NaN (as
    np.max and tf.reduce_max do) through LLVM's maximum/minimum intrinsics (scalar.py),
    which vectorise as reductions, where the op's select form does not."""
    if red.kind in ("max", "min") and red.dtype.is_floating:
        return f"{'fmaximum' if red.kind == 'max' else 'fminimum'}({acc}, {v})"
    return expr_src(red.emit["update"](red.dtype, S.var(acc), S.var(v)))


def _math_calls(exprs):
    """How many range-reduced math functions (exp, tanh, sigmoid, log...) a body calls."""
    return sum(1 for _, e in exprs for n in S.walk(e) if n.op == "call" and S.MATH[n.name])


def pool_min(exprs, accesses):
    """The fewest elements for which a loop goes to the pool: POOL_MIN, or down to a
    quarter of it for a body doing more work per element than POOL_WORK_PER_ELEMENT
    (its loads and stores, `accesses`, and its range-reduced calls)."""
    work = max(accesses + TRANSCENDENTAL_WORK * _math_calls(exprs), 1)
    return max(POOL_MIN // 4, min(POOL_MIN, -(-POOL_MIN * POOL_WORK_PER_ELEMENT // work)))


def pool_dispatch(params, arrays, C, partials, key, least=POOL_MIN):
    """Kernel lines that split a loop into row blocks, one record per block (see
    pool.pool_launch), run as task `key`: block_count(n0) blocks on the pool when the
    loop has `least` elements or more, else one block, which the pool runs in this
    thread. partials: the reductions over the first loop (Reductions): each block writes
    its own slice of a (blocks, ...) array, combined into the output afterwards in block
    order."""
    out = [f"    nt = block_count(n0) if {' * '.join(f'n{c}' for c in range(C))} >= {least} else 1"]
    part = {r.param: f"part_{r.param}" for r in partials}
    for r in partials:
        out.append(f"    {part[r.param]} = np.empty((nt,) + {r.param}.shape, {r.param}.dtype)")
    out.append(pool.launch_line(key, "n0", params, arrays, "    ", part))
    for r in partials:
        out += _combine_partials(r, part[r.param])
    return out


def _combine_partials(r, pa):
    """Lines adding up the blocks' partial results of reduction r, in block order; a
    float32 sum's block partials are float32 (what the task stores), added in float64.
    A sum goes through pool.combine_sum, which a launcher run from Python also has."""
    if r.kind == "sum" and (r.dtype.is_floating or r.dtype.is_integer):
        return [f"    combine_sum{'_wide' if r.wide else ''}({r.param}, {pa}, nt)"]
    first = f"np.float64({pa}2[0, e])" if r.wide else f"{pa}2[0, e]"
    return [f"    {pa}2 = flat_rows({pa}, nt)",
            f"    out_{r.param} = flat_rows({r.param}, 1)",
            f"    for e in range(out_{r.param}.shape[1]):",
            f"        acc = {first}",
            "        for t in range(1, nt):",
            f"            acc = {red_update(r, 'acc', pa + '2[t, e]')}",
            f"        out_{r.param}[0, e] = acc"]


# ----------------------------------------------------------------------------------
# opaque kernels and the entry
# ----------------------------------------------------------------------------------
def gen_opaque_kernel(n, g):
    """KernelSpec (without call) of opaque node n's kernel. An op whose lowering has
    "fixed" may specialise its kernel to the node (attrs, traced input shapes) when that
    returns literals; otherwise one kernel per op and dtype serves every node. The name
    is a hash of the source written with a placeholder name."""
    op, dtype = n.op, g.nodes[n.inputs[0]].dtype
    lower = REGISTRY[op].lower
    fixed = lower["fixed"](n.attrs, [g.nodes[p].shape for p in n.inputs]) if "fixed" in lower else None

    def body(fname):
        return lower["kernel"](fname, dtype) if fixed is None else lower["kernel"](fname, dtype, fixed)
    opts = lower.get("njit", "")          # e.g. "fastmath=True, parallel=True"
    name = f"k_{_hash(op + dtype.name + opts + body('KERNEL'))}"
    source = f"# {op} ({dtype.name})\n@njit(cache=CACHE, error_model='numpy', {NJIT_FLAGS}{opts})" \
        + body(name)
    return KernelSpec(name, source, None, threads=lower.get("threads", False))


class AllocSites:
    """The entry's allocations, numbered: `alloc(site, shape, dtype)` is `np.empty` when
    the entry is compiled (runtime_lib.alloc) and the buffer cache's `alloc` in the
    Python tier (backend.BufferCache), from the same source text."""

    def __init__(self):
        self.count = 0

    def __call__(self, shape, dtype):
        self.count += 1
        return f"alloc({self.count - 1}, {shape}, {dtype})"


@dataclass
class EntryCode:
    params: list         # the entry's parameters
    lines: list          # its body, one statement a line
    kernels: dict        # name -> source
    threaded: set        # kernels that may run Numba's parallel loops
    err_codes: dict      # error code -> node id
    inplace: list        # effects written straight into the variables' buffers
    n_sites: int         # allocation sites (AllocSites)
    parallel: bool       # it may run work on several threads (GEMMs, pool or prange loops)
    loops: list = field(default_factory=list)   # its top-level loops as functions (entry_loops.py)

    def source(self, name, decorator=""):
        """The loop functions' and the entry's definitions, each after `decorator`."""
        body = "".join("    " + line.replace(entry_loops.NAME, name) + "\n" for line in self.lines)
        return "".join(loop.source(name, decorator) + "\n" for loop in self.loops) + \
            f"{decorator}def {name}({', '.join(self.params)}):\n{body}"

    def loop_names(self, name):
        return [name + loop.suffix for loop in self.loops]


@dataclass
class _Gen:
    """What generating one entry collects, across the programs of its loop bodies."""
    kernels: dict
    threaded: set
    err_codes: dict
    alloc: AllocSites
    pooled: bool = False


def gen_entry(prog):
    """The entry's source and the kernels it calls (an EntryCode)."""
    g = prog.graph
    gen = _Gen({}, set(), {}, AllocSites())
    names, params = entry_params(g)

    def buf(i):
        return names.get(i, f"v{i}")

    inplace = inplace_effects(prog)
    alias = {g.effects[k][1]: g.effects[k][0] for k in inplace}
    lines = size_lines(g, names)
    lines += _program_lines(prog, gen, buf, alias, "", _products_into_updates(prog, alias, buf, gen.alloc))
    outs = [buf(o) for o in g.outputs] + [buf(v) for _, v in g.effects]
    lines.append(f"return ({''.join(o + ', ' for o in outs)})")
    parallel = bool(gen.threaded) or gen.pooled or _has_matmul(prog)
    lines, loops = entry_loops.split_loops(params, lines)
    return EntryCode(params, lines, gen.kernels, gen.threaded, gen.err_codes, inplace,
                     gen.alloc.count, parallel, loops)


def _has_matmul(prog):
    return any(s.kind == "matmul" or any(_has_matmul(b) for b in s.body or ()) for s in prog.steps)


def _program_lines(prog, gen, buf, alias, prefix, special=None, into=None, repeated=None):
    """The lines computing prog's steps. `buf(node id)` names a value; `prefix` keeps a
    loop body's scalar names apart from the entry's; `special` replaces the step of a
    node (a matmul, or a loop computing that node alone) with the given lines; `into`
    (node id -> a C-contiguous array expression) gives loop kernels' outputs their
    buffers: those used are removed from it. `repeated`: the lines run more than once
    per call (a loop body's; by default, any prefixed body's)."""
    g = prog.graph
    special = special or {}
    into = {} if into is None else into
    plan = _placements(prog, alias)
    placed, opened = set(), set()       # values stored in place; concatenations with a buffer
    folds, skipped = {}, set()          # scan node -> {xs index: (product, bias)}; steps left out
    for step in prog.steps:
        if step.kind != "loop" and g.nodes[step.node].op == "scan":
            found = _folded_biases(prog, g.nodes[step.node], step.body[0], alias)
            if found:
                folds[step.node] = {k: (prod, bias) for k, (prod, bias, _) in found.items()}
                skipped |= {id(s) for _, _, ss in found.values() for s in ss}
    lines = []
    for n in g.nodes:
        if n.op == "sym_scalar":
            lines.append(f"{buf(n.id)} = {gen.alloc('(1,)', npt(n.dtype))}")
            lines.append(f"{buf(n.id)}[0] = {dim_src(n.attrs['expr'])}")

    for step in prog.steps:
        if id(step) in skipped:
            continue
        key = step.node if step.kind != "loop" else (step.group.nodes[0] if len(step.group.nodes) == 1 else None)
        if key in special:
            lines.extend(special[key])
            continue
        if step.kind == "loop":
            grp = step.group
            inline = _scalar_inline(g, grp, buf, alias, gen.alloc, prefix)
            if inline is None:
                inline = _move_lines(g, grp, buf, alias, into, gen.alloc, prefix)
            if inline is None:
                inline = _concat_lines(g, grp, buf, alias, into, gen.alloc, placed, opened)
            if inline is not None:      # a scalar computation or a move: no kernel to compile
                lines.extend(inline)
                continue
            here = {}
            for s in grp.stores:
                if s in plan and s not in into:
                    o, axis, lo = plan[s]
                    if o not in opened:
                        lines.append(_output_line(g, o, buf, alias, into, gen.alloc))
                        opened.add(o)
                    here[s] = Placement(buf(o), g.nodes[o].shape, axis, lo)
            placed |= here.keys()
            spec = gen_loop(g, grp, buf, alias, repeated=bool(prefix) if repeated is None else repeated,
                            placed=here)
            gen.kernels[spec.name] = spec.source
            if spec.threads:
                gen.threaded.add(spec.name)
            gen.pooled = gen.pooled or spec.pooled
            lines += [_output_line(g, o, buf, alias, into, gen.alloc) for o in grp.stores + grp.reduces
                      if o not in here]
            lines.append(f"{spec.name}({', '.join(spec.call_args)})")
            continue
        n = g.nodes[step.node]
        out = buf(n.id)
        if step.kind == "view":
            lines.append(f"{out} = {buf(n.inputs[0])}.reshape({shape_src(n.shape)})")
        elif step.kind == "matmul":
            lines.extend(_matmul_lines(g, n, buf, gen.alloc))
        elif n.op == "scan":
            lines.extend(_scan_lines(g, n, step.body[0], gen, buf, prefix, _owned_sequences(prog, n, alias),
                                     folds.get(n.id, {})))
        elif n.op == "cond":
            lines.extend(_cond_lines(g, n, step.body, gen, buf, prefix))
        elif n.op == "while":
            lines.extend(_while_lines(g, n, step.body, gen, buf, prefix))
        elif n.op == "tuple_get":
            lines.append(f"{out} = {_result(prefix, g.nodes[n.inputs[0]], n.attrs['index'])}")
        else:
            lines.extend(_opaque_lines(g, n, gen, buf, prefix))
    return lines


def _output_line(g, o, buf, alias, into, alloc):
    """The line giving loop output `o` its buffer."""
    if o in alias:      # a variable's new value, written over its buffer
        return f"{buf(o)} = {buf(alias[o])}"
    if o in into:       # a loop step's result, written into its stacked result
        return f"{buf(o)} = {into.pop(o)}"
    n = g.nodes[o]
    return f"{buf(o)} = {alloc(shape_src(n.shape), npt(n.dtype))}"


def _opaque_lines(g, n, gen, buf, prefix):
    out = buf(n.id)
    kind = REGISTRY[n.op].lower["kind"]
    spec = gen_opaque_kernel(n, g)
    kname = spec.name
    gen.kernels[kname] = spec.source
    if spec.threads:
        gen.threaded.add(kname)
    lines = [f"{out} = {gen.alloc(shape_src(n.shape), npt(n.dtype))}"]
    x = g.nodes[n.inputs[0]]

    def err_code():
        # a kernel reports a bad value with its code; in a loop body the code names
        # the body's node itself (the entry's graph does not hold it)
        code = len(gen.err_codes) + 1
        gen.err_codes[code] = n.id if not prefix else n
        return code
    if kind == "axis3":
        ax = n.attrs["axis"]
        o3 = f"({prod_src(x.shape[:ax])}, {dim_src(x.shape[ax])}, {prod_src(x.shape[ax + 1:])})"
        o2 = f"({prod_src(x.shape[:ax])}, {prod_src(x.shape[ax + 1:])})"
        lines.append(f"{kname}({buf(x.id)}.reshape({o3}), {out}.reshape({o2}))")
    elif kind == "concat":
        ax = n.attrs["axis"]
        outer, inner = prod_src(n.shape[:ax]), prod_src(n.shape[ax + 1:])
        off = "0"
        for p in n.inputs:
            ps = g.nodes[p].shape
            lines.append(f"{kname}({buf(p)}.reshape(({outer}, {dim_src(ps[ax])}, {inner})), "
                         f"{out}.reshape(({outer}, {dim_src(n.shape[ax])}, {inner})), {int_arg(off)})")
            off = f"{off} + {dim_src(ps[ax])}"
    elif kind in ("gather", "scatter"):
        # (outer, n, inner) views on both sides of the indexed axis; the kernel
        # checks every index and reports the first bad one through `err`
        ax = n.attrs["axis"]
        idx = g.nodes[n.inputs[1]]
        big = x if kind == "gather" else n          # the side indexed by idx
        outer, inner = prod_src(big.shape[:ax]), prod_src(big.shape[ax + 1:])
        m = prod_src(idx.shape)
        src_mid, out_mid = (dim_src(x.shape[ax]), m) if kind == "gather" else (m, dim_src(n.shape[ax]))
        code = err_code()
        lines.append(f"{kname}({buf(x.id)}.reshape(({outer}, {src_mid}, {inner})), "
                     f"{buf(idx.id)}.reshape(({m},)), "
                     f"{out}.reshape(({outer}, {out_mid}, {inner})), err, {int_arg(code)})")
    elif kind == "check":
        # a check over the flat values: the first bad one goes to `err`
        code = err_code()
        m = prod_src(x.shape)
        lines.append(f"{kname}({buf(x.id)}.reshape(({m},)), {out}.reshape(({m},)), err, "
                     f"{int_arg(code)})")
    elif kind == "call":
        # generic: kernel(input buffers..., output buffer, *int attrs of the op)
        lower_args = REGISTRY[n.op].lower.get("args")
        extra = lower_args(n.attrs) if lower_args else []
        lines.append(f"{kname}({''.join(buf(p) + ', ' for p in n.inputs)}{out}"
                     f"{''.join(', ' + int_arg(dim_src(a)) for a in extra)})")
    else:
        raise AssertionError(kind)
    return lines


# --- loops (ops/control.py) ---------------------------------------------------------
def _result(prefix, node, k):
    """The name holding result k of control-flow `node` once it has run."""
    p = f"{prefix}l{node.id}_"
    return scan_result_name(p, node.attrs, k) if node.op == "scan" else f"{p}o{k}"


def _scan_lines(g, n, body, gen, buf, prefix, owned=frozenset(), folded=None):
    """A scan node as one `for` loop of the entry, the body's steps inside it.

    The carry lives in buffers of the loop's own (copies: the body never writes into
    the caller's arrays), replaced by copies of the body's new carry after each step
    (all read before any is replaced, so a body that swaps two carries is right). Each
    step's ys (and residuals) are written into their stacked results, allocated before
    the loop; so is the carry entering each step when the gradient reads it. `folded`:
    {xs index: (product node, bias node)} for sequences read as a product whose bias row
    the step's packed product adds (_folded_biases)."""
    a = n.attrs
    nc, ny = scan_results(a)
    nx = a["n_xs"]
    outs = a["outs"]
    used = results_read(g, n)
    p = f"{prefix}l{n.id}_"
    T, t = f"{p}T", f"{p}t"
    lines = [f"{T} = {dim_src(a['length'])}"]
    bg = body.graph
    special = _accumulations(body, nc, p)
    stacked = [k for k in range(nc) if nc + ny + k in used]
    # an entering carry the gradient reads lives in its stack, which has a row more
    # than the steps: the carry is its step's row and the new carry goes to the next
    # row (an LSTM's forward copied c and h into their stacks every step). Not a carry
    # the step adds into in place (special), nor a 0-d one.
    in_stack = [k for k in stacked if k not in special and len(outs[k][0]) >= 1]
    row0, nxt = (T, t) if a["reverse"] else ("0", f"{t} + 1")
    for k in range(nc):
        if k in in_stack:
            rest = "".join(dim_src(d) + ", " for d in outs[k][0])
            lines += [f"{p}hb{k} = {gen.alloc(f'({T} + 1, {rest})', npt(outs[k][1]))}",
                      f"{p}h{k} = {p}hb{k}[{'1' if a['reverse'] else '0'}:{'1 + ' if a['reverse'] else ''}{T}]",
                      f"assign({p}hb{k}[{row0}], {buf(n.inputs[k])})",
                      f"{p}c{k} = {p}hb{k}[{row0}]"]
        else:
            lines.append(f"{p}c{k} = {buf(n.inputs[k])}.copy()")
    # (a stacked result nothing reads is not stacked: an LSTM layer's outputs where only
    # its final state is used, 64 KB a step written to a 3.3 MB array no one read)
    per_step = [(i, j) for i, j in stacked_outputs(a) if i in used]
    for i, _ in per_step:
        shape, dtype = outs[i]
        lines.append(f"{scan_result_name(p, a, i)} = {gen.alloc(shape_src(shape), npt(dtype))}")
    for k in stacked:
        if k not in in_stack:
            shape, dtype = outs[nc + ny + k]
            lines.append(f"{p}h{k} = {gen.alloc(shape_src(shape), npt(dtype))}")
    names = scan_body_names(bg, n, p, buf)

    def body_buf(i):
        return names.get(i, f"{p}v{i}")
    order = f"range({T} - 1, -1, -1)" if a["reverse"] else f"range({T})"
    inner = [f"assign({p}h{k}.reshape(({T}, {_size(outs[k][0])}))[{t}], {p}c{k}.reshape(({_size(outs[k][0])},)))"
             for k in stacked if k not in in_stack]
    folded = folded or {}
    for k in range(nx):
        x = g.nodes[n.inputs[nc + k]]
        if k in folded:
            inner.append(f"{p}x{k} = {buf(folded[k][0])}.reshape({shape_src(x.shape)})[{t}]")
        elif len(x.shape) == 1:         # a 0-d slice travels as shape (1,)
            inner.append(f"{p}x{k} = {buf(x.id)}.reshape(({T}, 1))[{t}]")
        else:
            inner.append(f"{p}x{k} = {buf(x.id)}[{t}]")
    for k, (m, add) in special.items():
        names[add] = f"{p}c{k}"
    after = _summed_after(g, n, special, stacked, buf, p, per_step)
    packed = _packed_weights(body, nc + nx)
    for arg, tr in sorted(set(packed.values())):
        lines.append(f"{p}k{arg}_{int(tr)} = pack_weight({names[arg]}, np.bool_({tr}))")
    if packed:
        lines.append(f"{p}nb = {NO_BIAS_SRC}")
    flipped = {m: w for m, w in _transposed_captures(body, nc + nx).items() if m not in packed}
    for arg in sorted(set(flipped.values())):
        lines.append(f"{p}w{arg} = np.ascontiguousarray({names[arg]}.T)")
    # products BLAS adds into a buffer (beta = 1): a carry's sum per step, a sequence's slice
    added_to = {m: f"{p}c{k}" for k, (m, _) in special.items() if k not in after}
    # a step's slice of a sequence plus a product (an LSTM's gates: the input projection
    # plus h @ W): a packed product adds the slice as it stores into a buffer of the
    # loop's own, made once (the sequence is only read); BLAS adds the product into the
    # slice itself, where the sequence is the loop's to write (owned)
    to_sequences, plus_slice, bias_of = _added_to_sequences(body, nc, range(nx), special), {}, {}
    for m, (k, add) in list(to_sequences.items()):
        if m in packed:
            names[add] = f"{p}s{add}"
            plus_slice[m] = f"{p}x{k}"
            if k in folded:
                bias = folded[k][1]
                bias_of[m] = f"{buf(bias)}.reshape(({_size(g.nodes[bias].shape)},))"
            lines.append(f"{p}s{add} = {gen.alloc(shape_src(bg.nodes[add].shape), npt(bg.nodes[add].dtype))}")
        elif k in owned:
            names[add] = added_to[m] = f"{p}x{k}"
        else:
            del to_sequences[m]
    special_lines = {m: [] for k, (m, _) in special.items() if k in after}      # summed after the loop
    for m in packed.keys() - special_lines.keys():
        arg, tr = packed[m]
        special_lines[m] = _packed_matmul_lines(bg.nodes[m], body_buf, gen.alloc, f"{p}k{arg}_{int(tr)}",
                                                into=added_to.get(m), addend=plus_slice.get(m),
                                                out=names[to_sequences[m][1]] if m in plus_slice else None,
                                                bias=bias_of.get(m), no_bias=f"{p}nb")
    for m in (added_to.keys() | flipped.keys()) - special_lines.keys():
        w = flipped.get(m)
        special_lines[m] = _matmul_lines(bg, bg.nodes[m], lambda i, w=w: f"{p}w{w}" if i == w else body_buf(i),
                                         gen.alloc, into=added_to.get(m), untranspose_b=w is not None)
    special_lines.update({add: [] for m, add in list(special.values()) + list(to_sequences.values())})
    into = _stacked_in_place(body, per_step, a, p, t, set(names))
    stores = {o for s in body.steps if s.kind == "loop" for o in s.group.stores}
    for k in in_stack:            # a kernel computing the new carry writes it into the next row
        o = bg.outputs[k]
        if o in stores and o not in into and o not in names and bg.outputs[:nc].count(o) == 1 \
                and bg.nodes[o].dtype == outs[k][1] and tuple(bg.nodes[o].shape) == tuple(outs[k][0]):
            into[o] = f"{p}hb{k}[{nxt}]"
    offered = dict(into)
    inner += _program_lines(body, gen, body_buf, {}, p, special_lines, into)
    direct = {o for o in offered if o not in into}      # the kernel wrote into it
    res = [body_buf(o) for o in bg.outputs]
    fresh = _fresh_results(body, nc, set(a for _, a in special.values()))
    for k in range(nc):
        if k in in_stack:
            if not (bg.outputs[k] in direct and offered[bg.outputs[k]] == f"{p}hb{k}[{nxt}]"):
                size = _size(outs[k][0])
                inner.append(f"assign({p}hb{k}.reshape(({T} + 1, {size}))[{nxt}], {res[k]}.reshape(({size},)))")
            inner.append(f"{p}n{k} = {p}hb{k}[{nxt}]")
        elif k in fresh or k in special:
            inner.append(f"{p}n{k} = {res[k]}")
        else:
            inner.append(f"{p}n{k} = {res[k]}.reshape({shape_src(outs[k][0])}).copy()")
    inner += [f"{p}c{k} = {p}n{k}" for k in range(nc) if k not in special]
    for i, j in per_step:
        if offered.get(bg.outputs[j]) == f"{scan_result_name(p, a, i)}[{t}]" and bg.outputs[j] in direct:
            continue                # already there
        size = _size(outs[i][0][1:])
        inner.append(f"assign({scan_result_name(p, a, i)}.reshape(({T}, {size}))[{t}], {res[j]}.reshape(({size},)))")
    lines.append(f"for {t} in {order}:")
    lines += ["    " + line for line in inner] or ["    pass"]
    return lines + list(after.values())


def _products_into_updates(prog, alias, buf, alloc):
    """{node: lines} for variable updates W + a @ b written in place (passes/updates.py
    makes SGD's W - lr * (a @ b) one), where nothing else reads the product: the GEMM
    adds the product into the variable's buffer (beta = 1) at the update's step, and the
    product's own step is left out. An MLP's first layer, 784 x 256 updated from a batch
    of 128: a GEMM writing the gradient plus a pass reading it and the weight back cost
    90 us more on one thread than the GEMM adding into the weight."""
    g = prog.graph
    users = g.users()
    kept = g.kept()
    products = {s.node for s in prog.steps if s.kind == "matmul"}
    out = {}
    for s in prog.steps:
        if s.kind != "loop" or len(s.group.nodes) != 1:
            continue
        v = s.group.nodes[0]
        n = g.nodes[v]
        if v not in alias or n.op != "add" or alias[v] not in n.inputs or not n.dtype.is_floating:
            continue
        m = n.inputs[1] if n.inputs[0] == alias[v] else n.inputs[0]
        mn = g.nodes[m]
        if m not in products or users[m] != [v] or m in kept or len(mn.shape) != 2 or mn.dtype is not n.dtype \
                or tuple(map(hint, mn.shape)) != tuple(map(hint, n.shape)):
            continue
        out[m] = []
        out[v] = _matmul_lines(g, mn, buf, alloc, into=buf(alias[v])) + [f"{buf(v)} = {buf(alias[v])}"]
    return out


def _accumulations(body, nc, p):
    """{carry k: (matmul node, add node)} for carries the body updates as c + a @ b
    (a weight's gradient summed over the steps), where nothing else reads c or the
    product: BLAS adds the product into the carry's buffer (beta = 1), with no
    per-step temporary, sum or copy."""
    g = body.graph
    users = g.users()
    out = {}
    for k in range(nc):
        o = g.outputs[k]
        n = g.nodes[o]
        arg = g.args[k]
        if n.op != "add" or arg not in n.inputs or users[arg] != [o] or g.outputs.count(o) != 1:
            continue
        other = n.inputs[1] if n.inputs[0] == arg else n.inputs[0]
        m = g.nodes[other]
        if m.op != "matmul" or len(m.shape) != 2 or not m.dtype.is_floating or users[other] != [o] \
                or other in g.outputs or m.dtype is not n.dtype or len(n.shape) != 2:
            continue
        if not any(s.kind == "loop" and s.group.nodes == [o] for s in body.steps):
            continue                  # the add is fused with other work: leave it
        out[k] = (other, o)
    return out


def _folded_biases(prog, n, body, alias):
    """{xs index k: (product node, bias node, [steps left out])} for sequences of scan n
    that are a float32 product plus a bias row (an RNN's input projection x @ W + b,
    through reshapes) nothing else reads, where the step's slice is only added to a
    packed product (_added_to_sequences): the loop reads the product's slices and the
    packed product adds the bias row too (the bias added to the slice first, as the
    add it replaces did), so the 13 MB pass adding an LSTM's bias is left out. Not when
    the product is not a matmul's result or either is a variable written in place (the
    loop reads them later than the add did)."""
    g, bg = prog.graph, body.graph
    nc, nx = n.attrs["n_carry"], n.attrs["n_xs"]
    packed = _packed_weights(body, nc + nx)
    seqs = _added_to_sequences(body, nc, range(nx), _accumulations(body, nc, ""))
    users, b_users = g.users(), bg.users()
    kept = g.kept()
    producer = {o: s for s in prog.steps for o in s.outputs()}
    out = {}
    for m, (k, add) in seqs.items():
        if m not in packed or b_users[bg.args[nc + k]] != [add]:
            continue
        x, reader, steps = n.inputs[nc + k], n.id, []
        while x in producer and producer[x].kind == "view" and users[x] == [reader] and x not in kept:
            steps.append(producer[x])
            x, reader = g.nodes[x].inputs[0], x
        s = producer.get(x)
        if s is None or s.kind != "loop" or users[x] != [reader] or x in kept:
            continue
        found = _bias_add(g, s.group, x)
        if found is not None and found[0] in producer and producer[found[0]].kind == "matmul" \
                and not set(found) & set(alias.values()):
            out[k] = found + (steps + [s],)
    return out


def _bias_add(g, grp, x):
    """(product, bias) when loop group grp computes only x = product + bias, a 2-D float32
    product and a bias row read along its last dim; else None."""
    ops = [g.nodes[i].op for i in grp.nodes]
    if grp.stores != [x] or grp.reduces or ops.count("add") != 1 or set(ops) - {"add", "broadcast_to"} \
            or g.nodes[x].op != "add" or g.nodes[x].dtype is not D.float32 or len(grp.shape) != 2:
        return None
    leaves = analyse_loop(g, grp).leaves
    if len(leaves) != 2 or not all(lf["identity"] for lf in leaves):
        return None
    whole = [lf for lf in leaves if lf["present"] == [0, 1]]
    row = [lf for lf in leaves if lf["present"] == [1]]
    if len(whole) != 1 or len(row) != 1:
        return None
    prod, bias = whole[0]["vid"], row[0]["vid"]
    if g.nodes[prod].dtype is not D.float32 or g.nodes[bias].dtype is not D.float32 \
            or len(g.nodes[prod].shape) != 2:
        return None
    return prod, bias


def _owned_sequences(prog, n, alias):
    """The xs indices of scan node n whose stacked buffer its loop may write into: n is
    its only reader, and it is a buffer this program computed for it (a loop's or a
    product's result, perhaps through reshapes nothing else reads), not an argument, a
    variable or a result."""
    g = prog.graph
    users = g.users()
    producer = {o: s for s in prog.steps for o in s.outputs()}
    kept = g.kept()
    nc = n.attrs["n_carry"]
    out = set()
    for k in range(n.attrs["n_xs"]):
        x, reader = n.inputs[nc + k], n.id
        while users[x] == [reader] and x not in kept and x in producer:
            s = producer[x]
            if s.kind == "view":
                x, reader = g.nodes[x].inputs[0], x
                continue
            if s.kind == "matmul" or (s.kind == "loop" and x not in alias):
                out.add(k)
            break
    return out


def _added_to_sequences(body, nc, owned, special):
    """{matmul node: (xs index k, add node)} for steps that add a product to this step's
    slice of sequence k, one of `owned` (an LSTM's gates: the input projection, computed
    for all steps before the loop, plus h @ W): the product's call adds the slice, with no
    add kernel (_scan_lines). Only an add nothing but the step reads (not a result of the
    body) and that runs as a loop of its own."""
    g = body.graph
    users = g.users()
    taken = {m for m, _ in special.values()}
    lone = {s.group.nodes[0] for s in body.steps if s.kind == "loop" and len(s.group.nodes) == 1}
    out = {}
    for k in sorted(owned):
        xa = g.args[nc + k]
        if len(users[xa]) != 1:
            continue
        add = g.nodes[users[xa][0]]
        if add.op != "add" or add.id not in lone or add.id in g.outputs or len(add.shape) != 2:
            continue
        m = g.nodes[add.inputs[1] if add.inputs[0] == xa else add.inputs[0]]
        if m.op != "matmul" or m.id in taken or users[m.id] != [add.id] or m.id in g.outputs \
                or not m.dtype.is_floating or m.dtype is not add.dtype or g.nodes[xa].dtype is not add.dtype \
                or not all(len(g.nodes[i].shape) == 2 and all(map(same, g.nodes[i].shape, add.shape))
                           for i in (m.id, xa)):
            continue
        out[m.id] = (k, add.id)
    return out


def _transposed_captures(body, first_capture):
    """{matmul node: capture arg} for 2-D float products in a loop body that read a
    value from outside the loop (a weight) transposed as their right operand: the loop
    reads a contiguous transposed copy made once before it instead. OpenBLAS packed
    the transposed weight ~25% slower every step (an LSTM backward's dh = dg @ W^T,
    64x1024 @ 1024x256: 450 -> 345 us)."""
    bg, out = body.graph, {}
    for m in (bg.nodes[s.node] for s in body.steps if s.kind == "matmul"):
        if not m.attrs["transpose_b"] or len(m.shape) != 2 or not m.dtype.is_floating:
            continue
        w = m.inputs[1]
        if w in bg.args[first_capture:] and len(bg.nodes[w].shape) == 2:
            out[m.id] = w
    return out


# a weight with more rows than this is left to BLAS: the kernel reads a panel's rows
# (a panel's width of floats each) once per tile, and beyond this they no longer stay in the cache
PACK_MAX_ROWS = 4096


def _packed_weights(body, first_capture):
    """{matmul node: (capture arg, transposed)} for float32 products in a loop body whose
    right operand is a value from outside the loop (a weight): the loop packs it once
    before its first step and each step multiplies by the packed copy (packed_ir.py).
    OpenBLAS packed it again on every step: an LSTM's h @ W (64x256 @ 256x1024) ran at
    77 GFLOP/s a thread, 98 packed once; dh = dg @ W^T (64x1024 @ 1024x256) 90 -> 105."""
    from . import packed
    bg, out = body.graph, {}
    for m in (bg.nodes[s.node] for s in body.steps if s.kind == "matmul"):
        w = m.inputs[1]
        if len(m.shape) != 2 or m.dtype is not D.float32 or w not in bg.args[first_capture:] \
                or len(bg.nodes[w].shape) != 2:
            continue
        tr = bool(m.attrs["transpose_b"])
        rows = bg.nodes[w].shape[1 if tr else 0]
        if hint(rows) > PACK_MAX_ROWS or not packed.available():
            continue
        out[m.id] = (w, tr)
    return out


# the bias of a packed product without one: an empty array made where it is used, typed
# like a bias row (writeable, contiguous), so the products with a bias and without share
# one compiled pgemm (a global array types as read-only: the LSTM's forward and backward
# compiled one each, 0.12-0.18 s a cold process)
NO_BIAS_SRC = "np.zeros(0, np.float32)"


# a float32 product with at least this many rows (traced) packs its right operand and
# runs on the packed products (packed_ir.py) instead of OpenBLAS: an RNN's input
# projection for all steps, 3200x64 @ 64x1024, 2.25-2.65 ms against 2.76-2.83 (two
# threads, the pack included)
PACKED_MIN_ROWS = 2048
# With AVX-512's tiles, smaller products of at least PACK_MIN_MACS multiply-adds too,
# their blocks packing the weight as they go (pack_pgemm): a training step's x @ W and
# dY @ W^T. Taking turns in one process on the 2-core AVX-512 VM, two threads: the MLP's
# step (128x784 @ 784x256 and two of 4M) 1.02x, the autoencoder's 1.06x; on one thread
# 0.98-0.99x (noise-level). Smaller products (a 64x64 @ 64x128 step of mlp_digits)
# stay on OpenBLAS: there the pack cost more than it saved.
PACK_TRAINING_PRODUCTS = True
PACK_MIN_MACS = 1 << 22
# A weight gradient x^T @ dz (the left operand read transposed) takes the same small-
# product path while its inner size (the batch) is at most this. The kernel reads a tile
# of x^T's rows as one short run of x's row per k, and OpenBLAS's blocks each pack their
# shared operand again. Zen 4 VM, one call at a time in turns (s37/wgrad_rule.py): the
# autoencoder's four (batch 256) 0.86-0.97x OpenBLAS's time on two threads, 0.88-0.93x
# on one, 0.84-0.92x with the caller alone on a pool of two (OpenBLAS's two blocks then
# cost 1-4% more than its one call: the packed product's blocks pack nothing twice); the
# MLP's (batch 128) 0.90-0.92x; 256x1024 @ 1024x256 0.88-0.93x. An LSTM's, with 3200 rows
# of steps, 1.00-1.06x: left to OpenBLAS.
PACK_MAX_INNER_TRANSPOSED_A = 1024


def _packed_once(a, b, n, ta):
    """Whether a 2-D product packs its right operand for this one call and runs on the
    packed products: float32, and either many rows (PACKED_MIN_ROWS) and enough columns
    for a few panels per pool thread, or, on a CPU with AVX-512, PACK_MIN_MACS multiply-
    adds and at least two panels. A left operand read transposed (`ta`) only on the
    second path, with an inner size of at most PACK_MAX_INNER_TRANSPOSED_A."""
    from . import packed
    if len(n.shape) != 2 or n.dtype is not D.float32 or len(b.shape) != 2:
        return False
    rows, cols = (hint(d) for d in n.shape)
    inner = hint(a.shape[0] if ta else a.shape[1])
    if inner > (PACK_MAX_INNER_TRANSPOSED_A if ta else PACK_MAX_ROWS):
        return False
    tall = not ta and rows >= PACKED_MIN_ROWS and cols >= 16 * packed.PANEL
    small = PACK_TRAINING_PRODUCTS and packed.GEOMETRY.width == 16 and cols >= 2 * packed.PANEL \
        and rows * cols * inner >= PACK_MIN_MACS
    return (tall or small) and packed.available()


def _packed_matmul_lines(n, buf, alloc, packed_name, no_bias, into=None, addend=None, out=None,
                         bias=None):
    """A loop body's product with a packed weight (_packed_weights); `into`: a buffer it
    is added to; `addend`: an array added to it (then `bias`, a row, unless it is
    `no_bias`, an empty array) as it is stored into buffer `out`."""
    bias = no_bias if bias is None else bias
    a = buf(n.inputs[0]) + (".T" if n.attrs["transpose_a"] else "")
    if into is not None:
        return [f"pgemm({a}, {packed_name}, {into}, {into}, {no_bias}, np.bool_(True))"]
    if addend is not None:
        return [f"pgemm({a}, {packed_name}, {out}, {addend}, {bias}, np.bool_(True))"]
    out = buf(n.id)
    return [f"{out} = {alloc(shape_src(n.shape), npt(n.dtype))}",
            f"pgemm({a}, {packed_name}, {out}, {out}, {no_bias}, np.bool_(False))"]


def _summed_after(g, n, special, stacked, buf, p, per_step):
    """{carry k: the line after the loop} for accumulations (_accumulations) whose
    product is a_t^T @ b_t with a_t and b_t each a step's slice of a stacked array (an
    xs, or a y or residual the loop stacks anyway): the sum over the steps is then one
    GEMM of the stacked arrays, rows of all steps together, after the loop. An LSTM's
    weight gradient: 50 memory-bound products of 64 rows became one of 3200 rows. Not
    when the steps read the carry (stacked)."""
    a = n.attrs
    nc, nx = a["n_carry"], a["n_xs"]
    bg = a["body"]
    T = f"{p}T"
    whole = {bg.args[nc + k]: buf(n.inputs[nc + k]) for k in range(nx)}
    for i, j in per_step:           # the stacked results the loop fills
        whole.setdefault(bg.outputs[j], scan_result_name(p, a, i))
    out = {}
    for k, (m, _) in special.items():
        mm = bg.nodes[m]
        x, y = mm.inputs
        if k in stacked or not mm.attrs["transpose_a"] or mm.attrs["transpose_b"] \
                or x not in whole or y not in whole:
            continue
        (rows, cx), cy = bg.nodes[x].shape, bg.nodes[y].shape[1]
        flat = f"({T} * {dim_src(rows)}, "
        out[k] = (f"gemm({whole[x]}.reshape({flat}{dim_src(cx)})), {whole[y]}.reshape({flat}{dim_src(cy)})), "
                  f"{p}c{k}, np.bool_(True), np.bool_(False), np.bool_(True))")
    return out


def _stacked_in_place(body, per_step, attrs, p, t, named):
    """{body node: its stacked result's slice at step t} for the step's ys and residuals
    a loop kernel computes: the kernel writes straight into the stacked result, so the
    step makes no copy (the LSTM's forward step made eight of 64 KB). Not for a value
    already named (an argument, a carry summed in place), a 0-d one (its slice would be
    a scalar), or one stacked twice (the second is copied)."""
    g = body.graph
    stores = {o for s in body.steps if s.kind == "loop" for o in s.group.stores}
    outs = attrs["outs"]
    into = {}
    for i, j in per_step:
        o = g.outputs[j]
        n = g.nodes[o]
        if o in stores and o not in named and o not in into and len(n.shape) >= 1 \
                and outs[i][1] == n.dtype and tuple(outs[i][0][1:]) == tuple(n.shape):
            into[o] = f"{scan_result_name(p, attrs, i)}[{t}]"
    return into


def _fresh_results(body, nc, skip):
    """Carries whose new value is a buffer the body allocated this step (no copy needed to
    keep it: it is nobody else's)."""
    g = body.graph
    made = {}
    for s in body.steps:
        if s.kind == "loop":
            for o in s.group.stores + s.group.reduces:
                made[o] = True
        elif s.kind == "matmul":
            made[s.node] = True
    out = set()
    for k in range(nc):
        o = g.outputs[k]
        if o in made and o not in skip and g.outputs[:nc].count(o) == 1:
            out.add(k)
    return out


def _sub_program(body, gen, names, p, repeated):
    """A body's lines with its args named by `names` (arg node id -> name), and the
    names of its outputs; repeated: it runs more than once per call (a loop's)."""
    def body_buf(i):
        return names.get(i, f"{p}v{i}")
    lines = _program_lines(body, gen, body_buf, {}, p, repeated=repeated)
    return lines, [body_buf(o) for o in body.graph.outputs]


def _fresh_copies(res, outs, p, tmp="n"):
    """Copies of a body's results (C-contiguous, of the result's shape): a result may be
    an argument's buffer or a view of one."""
    return [f"{p}{tmp}{k} = {r}.reshape({shape_src(outs[k][0])}).copy()" for k, r in enumerate(res)]


def _cond_lines(g, n, bodies, gen, buf, prefix):
    """A cond node as an `if` whose two arms compute one branch each."""
    a = n.attrs
    n_ops, n_true = a["n_ops"], a["n_true"]
    p = f"{prefix}l{n.id}_"
    ops = [buf(i) for i in n.inputs[1:1 + n_ops]]
    caps = {"true": [buf(i) for i in n.inputs[1 + n_ops:1 + n_ops + n_true]],
            "false": [buf(i) for i in n.inputs[1 + n_ops + n_true:]]}
    lines = [f"if {buf(n.inputs[0])}.reshape((1,))[0]:"]
    for arm, body in zip(("true", "false"), bodies):
        if arm == "false":
            lines.append("else:")
        names = dict(zip(body.graph.args, ops + caps[arm]))
        inner, res = _sub_program(body, gen, names, f"{p}{arm[0]}", repeated=bool(prefix))
        inner += _fresh_copies(res, a["outs"], p, "o")
        lines += ["    " + line for line in inner] or ["    pass"]
    return lines


def _while_lines(g, n, bodies, gen, buf, prefix):
    """A while node as a `while True` loop: the condition's lines, a break, the body's."""
    a = n.attrs
    nv, ncond = a["n_vars"], a["n_cond"]
    outs = a["outs"]
    p = f"{prefix}l{n.id}_"
    lines = [f"{p}o{k} = {buf(n.inputs[k])}.copy()" for k in range(nv)]
    vs = [f"{p}o{k}" for k in range(nv)]
    cond, body = bodies
    names = dict(zip(cond.graph.args, vs + [buf(i) for i in n.inputs[nv:nv + ncond]]))
    inner, res = _sub_program(cond, gen, names, f"{p}c", repeated=True)
    inner.append(f"if not {res[0]}.reshape((1,))[0]:")
    inner.append("    break")
    names = dict(zip(body.graph.args, vs + [buf(i) for i in n.inputs[nv + ncond:]]))
    body_lines, res = _sub_program(body, gen, names, f"{p}b", repeated=True)
    inner += body_lines + _fresh_copies(res, outs, p)
    inner += [f"{p}o{k} = {p}n{k}" for k in range(nv)]
    lines.append("while True:")
    lines += ["    " + line for line in inner]
    return lines


def _size(shape):
    return prod_src(shape) if shape else "1"


def _first(g, vid, var):
    """The first element of one-element buffer `var` (node vid). A 1-D buffer, or an
    input's or constant's 0-d value (the executor passes those as shape (1,)), is
    indexed as it is; in compiled code each `.reshape((1,))` cost Numba about 25 ms."""
    n = g.nodes[vid]
    plain = len(n.shape) == 1 or _passed_as_one(n)
    return f"{var}[0]" if plain else f"{var}.reshape((1,))[0]"


def _scalar_inline(g, grp, buf, alias, alloc, prefix=""):
    """Entry lines computing a loop group whose iteration space is one element, or None."""
    if any(not is_one(d) for d in grp.shape) or grp.reduces:
        return None
    scalar = _scalar_lines(g, grp, buf, prefix)
    if scalar is None:
        return None
    lines, names = scalar
    for o in grp.stores:
        lines.append(_output_line(g, o, buf, alias, {}, alloc))
        lines.append(f"{_first(g, o, buf(o))} = {names[o]}")
    return lines


def _scalar_lines(g, grp, buf, prefix):
    """(lines, names) computing a group's nodes once, as scalars read from its loads'
    first elements (names: node id -> its variable), or None for a load through an
    access op, an iota or a random draw."""
    names, lines = {}, []
    for vid, load in grp.loads.items():
        if load.chain:
            return None
        names[vid] = f"{prefix}s{vid}"
        lines.append(f"{prefix}s{vid} = {_first(g, load.base, buf(load.base))}")
    for i in grp.nodes:
        n = g.nodes[i]
        if n.op in ("iota", "random"):
            return None
        names[i] = f"{prefix}s{i}"
        lines.append(f"{prefix}s{i} = {npt(n.dtype)}({expr_src(node_expr(n, names, g.nodes))})")
    return lines, names


def _move_lines(g, grp, buf, alias, into, alloc, prefix=""):
    """Entry lines for a loop group that only moves data, as one array assignment, or
    None: a copy through transposes and slices (broadcast along leading dims), or a fill
    with one value computed from one-element operands, as a call of runtime_lib.assign:
    NumPy's assignment in the Python tier, a loop nest in a compiled entry (Numba's own
    assignment and transpose cost seconds to compile). No kernel is compiled for it
    (each cost a cold process about 0.1 s, and the LSTM step had five). Exact either
    way: a copy, or the scalar lines _scalar_inline writes. Big moves keep their kernels,
    which can run on the pool (MOVE_POOL_MIN)."""
    if not _small_move(grp, alias):
        return None
    o = grp.stores[0]
    wide = [d for d in range(len(grp.shape)) if not is_one(grp.shape[d])]
    target = f"{buf(o)}.reshape(({''.join(dim_src(grp.shape[d]) + ', ' for d in wide)}))"
    value = _fill_value(g, grp, buf, prefix)
    if value is not None:
        scalar_lines, src = value
    else:
        scalar_lines, src = [], _copied_view(g, grp, buf)
        if src is None:
            return None
    return scalar_lines + [_output_line(g, o, buf, alias, into, alloc), f"assign({target}, {src})"]


def _small_move(grp, alias):
    """Whether a loop group could be copies in the entry: one result, no reduction, not
    a variable's new value written over its buffer, and below MOVE_POOL_MIN elements."""
    if grp.reduces or len(grp.stores) != 1 or grp.stores[0] in alias:
        return False
    total = 1
    for d in grp.shape:
        total *= max(hint(d), 1)
    return total < MOVE_POOL_MIN


def _concat_pieces(g, grp, alias):
    """(output node, [(pad node, axis, offset, size)]) for a loop group that adds
    zero-padded pieces tiling one dim (the gradient of a split: each piece padded to the
    whole, then summed), or None."""
    if grp.reduces or len(grp.stores) != 1 or grp.stores[0] in alias or len(grp.loads) < 2 \
            or any(g.nodes[i].op != "add" for i in grp.nodes):
        return None
    o = grp.stores[0]
    pieces = _tiling_pieces(g, grp, analyse_loop(g, grp).leaves)
    if pieces is None or not _sums_each_once(g, grp, o, [vid for vid, *_ in pieces]):
        return None
    return o, pieces


def _concat_lines(g, grp, buf, alias, into, alloc, placed=frozenset(), opened=frozenset()):
    """Entry lines for a concatenation (_concat_pieces) as one `assign` per piece into
    its slice, or None (a kernel). An LSTM's backward step had one such kernel (its four
    gate gradients into one row of the stacked gradient): 0.7 s to compile, and 20 us a
    step where the copies take a few. Pieces in `placed` are there already (their
    kernels stored them in place, _placements); an output in `opened` has its buffer."""
    found = _concat_pieces(g, grp, alias)
    if found is None:
        return None
    o, pieces = found
    rest = [p for p in pieces if g.nodes[p[0]].inputs[0] not in placed]
    if len(rest) == len(pieces) and not _small_move(grp, alias):
        return None
    target = f"{buf(o)}.reshape({shape_src(grp.shape)})"
    lines = [] if o in opened else [_output_line(g, o, buf, alias, into, alloc)]
    for vid, axis, lo, n in rest:
        base = g.nodes[vid].inputs[0]
        lines.append(f"assign({target}[{':, ' * axis}{lo}:{lo + n}], "
                     f"{buf(base)}.reshape({shape_src(g.nodes[base].shape)}))")
    return lines


def _placements(prog, alias):
    """{value: (concatenation output, axis, offset)} for values a loop group stores that
    nothing but one concatenation (and the group itself) reads (_concat_pieces): the group's kernel stores them
    straight into their slices of its buffer, and the concatenation copies nothing. An
    LSTM's backward step copied its four gate gradients into one row of the stacked
    gradient (256 KB a step)."""
    g = prog.graph
    users = g.users()
    kept = g.kept()
    stored = {s: step.group for step in prog.steps if step.kind == "loop" for s in step.group.stores}
    out = {}
    for step in prog.steps:
        found = _concat_pieces(g, step.group, alias) if step.kind == "loop" else None
        if found is None:
            continue
        o, pieces = found
        for vid, axis, lo, _ in pieces:
            base = g.nodes[vid].inputs[0]
            grp = stored.get(base)
            # (its own group may read it too: there it is a register, not the buffer)
            if grp is None or grp is step.group or base in kept or base in alias \
                    or not set(users[base]) <= {vid} | set(grp.nodes) \
                    or not set(users[vid]) <= set(step.group.nodes) \
                    or len(g.nodes[base].shape) != len(grp.shape) \
                    or not all(map(same, g.nodes[base].shape, grp.shape)):
                continue
            out[base] = (o, axis, lo)
    return out


def _tiling_pieces(g, grp, leaves):
    """[(pad node, axis, offset, size)] sorted by offset when every load is a zero pad of
    an array shaped like the group but along one axis, the same for all, and the pieces
    tile that axis; else None."""
    pieces, axes = [], set()
    for lf in leaves:
        chain = lf["load"].chain
        if len(chain) != 1 or len(lf["guards"]) != 1:
            return None
        pad = g.nodes[chain[0]]
        (k,) = lf["guards"]
        base_shape = g.nodes[pad.inputs[0]].shape
        if pad.op != "pad" or pad.attrs["constant"] != 0 or pad.dtype != g.nodes[grp.stores[0]].dtype \
                or len(base_shape) != len(grp.shape) or len(lf["idx"]) != len(grp.shape):
            return None
        try:
            lo, n = int(pad.attrs["paddings"][k][0]), int(base_shape[k])
        except TypeError:          # a symbolic size
            return None
        for j, (d, s0, s1) in enumerate(lf["idx"]):
            if j == k:
                ok = (d, s0, s1) == (k, -lo, 1)
            elif is_one(grp.shape[j]):
                ok = d is None and is_one(base_shape[j])
            else:
                ok = (d, s0, s1) == (j, 0, 1) and same(base_shape[j], grp.shape[j])
            if not ok:
                return None
        pieces.append((lf["vid"], k, lo, n))
        axes.add(k)
    pieces.sort(key=lambda p: p[2])
    if len(axes) != 1:
        return None
    end = 0
    for _, _, lo, n in pieces:
        if lo != end:
            return None
        end += n
    return pieces if same(grp.shape[pieces[0][1]], end) else None


def _sums_each_once(g, grp, root, leaves):
    """Whether the group's adds sum exactly these values, each once, into root."""
    counts = {}

    def walk(v):
        if v in leaves:
            counts[v] = counts.get(v, 0) + 1
            return True
        return v in grp.nodes and all(walk(i) for i in g.nodes[v].inputs)
    return walk(root) and sorted(counts) == sorted(leaves) and set(counts.values()) == {1}


def _fill_value(g, grp, buf, prefix):
    """(lines, name) of the one value a group of elementwise ops on one-element operands
    stores everywhere, or None."""
    if not grp.loads or any(not all(is_one(d) for d in g.nodes[vid].shape) for vid in grp.loads) \
            or any(REGISTRY[g.nodes[i].op].kind != "elementwise" for i in grp.nodes):
        return None
    scalar = _scalar_lines(g, grp, buf, prefix)
    return None if scalar is None else (scalar[0], scalar[1][grp.stores[0]])


def _copied_view(g, grp, buf):
    """The view of a group's one load that it stores (through broadcasts only), as
    `assign`'s source arguments (runtime_lib.py), or None: a NumPy expression for the
    load's slices with positive steps, then the permutation that transposes it to the
    group's dims that are not 1; its dims must be the group's last ones (the rest
    broadcast)."""
    nodes = g.nodes
    v = grp.stores[0]
    while v in grp.nodes and nodes[v].op == "broadcast_to":
        v = nodes[v].inputs[0]
    if v not in grp.loads or any(nodes[i].op != "broadcast_to" for i in grp.nodes):
        return None
    lf = next(lf for lf in analyse_loop(g, grp).leaves if lf["vid"] == v)
    if lf["guards"]:
        return None
    base = lf["load"].base
    if not lf["idx"]:
        return _first(g, base, buf(base))
    base_shape = nodes[base].shape if lf["load"].chain else nodes[v].shape
    subs, kept = [], []
    for k, (d, s0, s1) in enumerate(lf["idx"]):
        if d is None or is_one(grp.shape[d]):
            subs.append(dim_src(s0))
            continue
        step = int(s1)
        if step < 1 or d in kept:
            return None
        n = dim_src(grp.shape[d])
        if step == 1 and same(s0, 0) and same(base_shape[k], grp.shape[d]):
            subs.append(":")
        else:
            start = "" if same(s0, 0) else dim_src(s0)
            end = n if step == 1 else f"{step} * ({n} - 1) + 1"
            subs.append(f"{start}:{start + ' + ' if start else ''}{end}{f':{step}' if step > 1 else ''}")
        kept.append(d)
    wide = [d for d in range(len(grp.shape)) if not is_one(grp.shape[d])]
    if sorted(kept) != wide[len(wide) - len(kept):]:
        return None
    view = buf(base) if all(x == ":" for x in subs) else f"{buf(base)}[{', '.join(subs)}]"
    perm = sorted(range(len(kept)), key=lambda j: kept[j])
    if perm != list(range(len(kept))):
        view += f", ({''.join(f'{j}, ' for j in perm)})"      # assign's perm argument
    return view


# the fewest multiply-adds for which a narrow product goes to ngemm: it saves about a
# third of OpenBLAS's time (784x100 @ 100x10: 12.7 against 20.1 us), but a process's
# first ngemm needs the packed module (0.2-0.3 s to compile on a cold cache, beside the
# kernels compiling): mlp_digits' 128x64 @ 64x10 gradients would save under 1 us a
# step, and its cold run went from 0.64 to 1.0 s
NARROW_MIN_MACS = 1 << 17


def _narrow(a, n, ta):
    """Whether a 2-D float32 product a^T @ b with at most narrow_ir.MOST_COLUMNS columns
    (a weight gradient x^T @ dz) goes to ngemm, which reads x in place (narrow_ir.py).
    By the traced sizes: ngemm leaves a call with more columns to gemm."""
    from . import narrow_ir, packed
    if not (ta and len(n.shape) == 2 and len(a.shape) == 2 and n.dtype is D.float32):
        return False
    rows, cols, inner = hint(n.shape[0]), hint(n.shape[1]), hint(a.shape[0])
    return cols <= narrow_ir.MOST_COLUMNS and rows * cols * inner >= NARROW_MIN_MACS and packed.available()


def _matmul_lines(g, n, buf, alloc, into=None, untranspose_b=False):
    """A matmul's lines; `into`: a 2-D float buffer the product is added to instead;
    `untranspose_b`: buf names a transposed copy of the right operand, read as it is."""
    a, b = (g.nodes[i] for i in n.inputs)
    out = buf(n.id)
    ta, tb = n.attrs["transpose_a"], n.attrs["transpose_b"] and not untranspose_b
    fn = "ngemm" if _narrow(a, n, ta) else "gemm"
    if _packed_once(a, b, n, ta):
        from .packed import PANEL
        # the packed copy of the weight, in a buffer of its own allocation site (the
        # Python tier reuses it from call to call)
        scratch = alloc(f"(({dim_src(n.shape[1])} + {PANEL - 1}) // {PANEL}, "
                        f"{dim_src(a.shape[0] if ta else a.shape[1])}, {PANEL})", "np.float32")
        left = buf(a.id) + (".T" if ta else "")
        target, adding = (into, True) if into is not None else (out, False)
        lines = [] if into is not None else [f"{out} = {alloc(shape_src(n.shape), npt(n.dtype))}"]
        return lines + [f"pack_pgemm({left}, {buf(b.id)}, np.bool_({tb}), {scratch}, {target}, {target}, "
                        f"{NO_BIAS_SRC}, np.bool_({adding}))"]
    if into is not None:
        return [f"{fn}({buf(a.id)}, {buf(b.id)}, {into}, np.bool_({ta}), np.bool_({tb}), np.bool_(True))"]
    lines = [f"{out} = {alloc(shape_src(n.shape), npt(n.dtype))}"]
    if len(n.shape) == 2 and n.dtype.is_floating:
        # one helper for the four transposes (np.bool_: not a literal, so not compiled per flag)
        lines.append(f"{fn}({buf(a.id)}, {buf(b.id)}, {out}, np.bool_({ta}), np.bool_({tb}), np.bool_(False))")
        return lines
    batch = n.shape[:-2]
    nb = prod_src(batch)

    def three(x):
        xb = x.shape[:-2]
        lead = prod_src(xb) if xb and not all(is_one(d) for d in xb) else "1"
        return f"{buf(x.id)}.reshape(({lead}, {dim_src(x.shape[-2])}, {dim_src(x.shape[-1])}))"
    fn = "bmm" if n.dtype.is_floating else "bmm_loop"
    lines.append(f"{fn}({three(a)}, {three(b)}, {out}.reshape(({nb}, {dim_src(n.shape[-2])}, "
                 f"{dim_src(n.shape[-1])})), {ta}, {tb})")
    return lines
