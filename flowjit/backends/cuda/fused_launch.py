"""One launch for a run of kernels: the entry's consecutive kernel launches become the
phases of a single cooperative kernel, separated by grid-wide barriers.

Why: a training step is a few dozen small kernels, and on a GPU each launch costs
microseconds of host time (numba-cuda types and marshals every argument), so the step
was bound by the host, not the GPU. One cooperative launch pays that once and passes each
buffer once.

How: `fuse_launches` rewrites the entry source (`def ENTRY`, see backend.py) statement
by statement:
- a launch `k[grid, block](args)` (or `if test:` around launches) becomes a phase: its
  arguments and test are evaluated into temporaries where the launch was, so host lines
  after it may rebind the names it used;
- host-only lines (sizes, allocations, views, uploads of host values) stay in place;
  `RT.zeros` becomes an allocation plus a zero-fill phase;
- any other line (a device copy, a host fallback, a loop or branch of the entry, the
  return) ends the run: the run's phases launch there as one kernel,
  `m_<hash>[RT.coop_grid(m), RT.TPB](...)`, whose body calls each phase's kernel as a
  device function and `grid.sync()`s between phases.
Every kernel of this backend is written for any grid size (grid-stride loops over
elements, rows and matmul tiles) and block size TPB, so a phase computes exactly what
its own launch computed. A run of one launch is left as it was. Custom ops' kernels
(they call the user's device functions) end a run too.
"""
import ast
import re

from .custom import kernel_globals
from .kernels import KERNEL_HEADER, named

DEVICE_HEADER = "@cuda.jit(device=True)\n"
# kernel parameters must fit 4 KB (CUDA before 12.1, and older GPUs): a longer run is
# launched as several kernels
PARAM_BYTES = 4000
# static shared memory of one kernel must fit 48 KB: the phases' arrays all coexist
SHARED_BYTES = 32 * 1024

# calls a host-only line may make: none reads or writes device data that a kernel of
# the run could still be producing
_HOST_CALLS = {"RT.empty", "RT.scratch", "RT.flat", "RT.cdiv", "RT.grid", "RT.blocks",
               "RT.row_splits", "RT.row_threads", "RT.col_splits", "RT.to_device",
               "int", "float", "bool", "max", "min", "len", "range"}

_ZERO_FILL = named(lambda name: f'''
def {name}(a):
    t = cuda.grid(1)
    while t < a.shape[0]:
        a[t] = 0
        t += cuda.gridsize(1)
''', "zero fill")


def _dotted(node):
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return base and f"{base}.{node.attr}"
    return None


def _host_expr(node, params):
    """True when evaluating `node` touches no device data: names, constants, arithmetic,
    `.shape` / `.reshape(...)` views, the calls in _HOST_CALLS or np.*, and elements of
    the entry's parameters `params` (only the rng keys, host arrays, are read so; an
    element of another buffer could be one a kernel of the run is still writing)."""
    for n in ast.walk(node):
        if isinstance(n, ast.Subscript) and not (
                isinstance(n.value, ast.Name) and n.value.id in params):
            return False
        if isinstance(n, ast.Call):
            f = _dotted(n.func)
            if f is None:
                return False
            if not (f in _HOST_CALLS or f.startswith("np.") or f.endswith(".reshape")):
                return False
            if f == "RT.scratch" and (n.keywords or (len(n.args) > 4 and not (
                    isinstance(n.args[4], ast.Constant) and n.args[4].value is False))):
                return False       # zero=True launches a fill
    return True


def _launch(node, kernels, params):
    """(kernel name, grid/block expression, args) of a fusable launch statement, or None."""
    if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
        return None
    call = node.value
    if not (isinstance(call.func, ast.Subscript) and isinstance(call.func.value, ast.Name)):
        return None
    name = call.func.value.id
    src = kernels.get(name)
    if src is None or KERNEL_HEADER not in src or call.keywords or kernel_globals(src):
        return None
    if not all(_host_expr(a, params) for a in call.args) or not _host_expr(call.func.slice, params):
        return None
    return name, call.func.slice, call.args


class _Fuser:
    def __init__(self, kernels, params):
        self.kernels, self.params = kernels, params      # params: the entry's parameters
        self.out = []            # statements of the new entry body (source)
        self.run = []            # phases of the current run: (kernel, arg temps, test temp)
        self.temps = {}          # (expression, versions of its names) -> temp name
        self.version = {}        # name -> how often it was assigned so far
        self.fused = {}          # megakernel name -> source
        self.param_bytes = {}    # temp -> its size as a kernel parameter (an estimate)
        self.count = 0

    def _temp(self, expr):
        names = tuple(sorted({(n.id, self.version.get(n.id, 0)) for n in ast.walk(expr)
                              if isinstance(n, ast.Name)}))
        key = (ast.dump(expr), names)
        t = self.temps.get(key)
        if t is None:
            t = self.temps[key] = f"_f{self.count}"
            self.count += 1
            self.out.append(f"{t} = {ast.unparse(expr)}")
            self.param_bytes[t] = _param_bytes(expr)
        return t

    def _assigned(self, node):
        for n in ast.walk(node):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                self.version[n.id] = self.version.get(n.id, 0) + 1

    def phase(self, launch, test=None):
        name, config, args = launch
        self.run.append((name, self._temp(config), [self._temp(a) for a in args], test))

    def statement(self, node):
        launch = _launch(node, self.kernels, self.params)
        if launch is not None:
            return self.phase(launch)
        if isinstance(node, ast.If) and not node.orelse and _host_expr(node.test, self.params):
            launches = [_launch(s, self.kernels, self.params) for s in node.body]
            if all(launches):
                test = self._temp(ast.Call(ast.Name("int", ast.Load()), [node.test], []))
                for la in launches:
                    self.phase(la, test)
                return
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                isinstance(node.targets[0], ast.Name):
            v = node.value
            if (isinstance(v, ast.Call) and _dotted(v.func) == "RT.zeros" and not v.keywords and
                    all(_host_expr(a, self.params) for a in v.args)) or \
                    _zeroed_scratch(v, self.params):
                return self._zeros(node)
            if _host_expr(v, self.params):
                self.out.append(ast.unparse(node))
                return self._assigned(node)
        self.flush()
        self.out.append(ast.unparse(node))
        self._assigned(node)

    def _zeros(self, node):
        """`x = RT.zeros(n, dt)` (or a scratch buffer cleared on every call): the
        allocation without the clear, then a zero-fill phase."""
        v = node.value
        if _dotted(v.func) == "RT.zeros":
            alloc = ast.Call(ast.Attribute(ast.Name("RT", ast.Load()), "empty", ast.Load()), v.args, [])
        else:
            alloc = ast.Call(v.func, v.args[:4], [])
        target = node.targets[0]
        self.out.append(f"{target.id} = {ast.unparse(alloc)}")
        self._assigned(node)
        zname, zsrc = _ZERO_FILL
        self.kernels[zname] = zsrc
        config = ast.parse(f"(RT.grid({target.id}.shape[0]), RT.TPB)", mode="eval").body
        self.run.append((zname, self._temp(config),
                         [self._temp(ast.Name(target.id, ast.Load()))], None))

    def flush(self):
        """Launch the run: its phases as one kernel, in chunks whose parameters fit
        PARAM_BYTES and whose kernels' shared memory fits SHARED_BYTES."""
        run, self.run = self.run, []
        chunk = []
        for ph in run:
            if chunk and not self._fits(chunk + [ph]):
                self._emit(chunk)
                chunk = []
            chunk.append(ph)
        if chunk:
            self._emit(chunk)

    def _fits(self, phases):
        args = {a for _, _, args, test in phases for a in args + ([test] if test else [])}
        shared = sum(_shared_bytes(self.kernels[k]) for k in {ph[0] for ph in phases})
        return sum(self.param_bytes[a] for a in args) <= PARAM_BYTES and shared <= SHARED_BYTES

    def _emit(self, run):
        if len(run) == 1:
            name, config, args, test = run[0]
            line = f"{name}[{config}]({', '.join(args)})"
            self.out.append(f"if {test}:\n    {line}" if test else line)
        else:
            name, src, params = _megakernel(run, self.kernels)
            self.fused[name] = src
            self.out.append(f"{name}[RT.coop_grid({name}), RT.TPB]({', '.join(params)})")


def _param_bytes(expr):
    """What a kernel argument takes in the parameter buffer: a Numba array is a struct of
    5 words plus shape and strides (a `.reshape((a, b, c))` has 3 dims, the entry's
    buffers 1), a scalar one word. Names are counted as arrays: an overestimate."""
    if isinstance(expr, ast.Call):
        f = _dotted(expr.func) or ""
        if f.endswith(".reshape") and expr.args and isinstance(expr.args[0], ast.Tuple):
            return 8 * (5 + 2 * len(expr.args[0].elts))
        if f.startswith("np.") or f in ("int", "float", "bool"):
            return 8
    if isinstance(expr, ast.Constant):
        return 8
    return 8 * (5 + 2)


def _shared_bytes(src):
    """Static shared memory of a kernel: its `cuda.shared.array(shape, dtype)` arrays
    (shapes are literals here), at 8 bytes an element (an overestimate for float32)."""
    total = 0
    for shape in re.findall(r"cuda\.shared\.array\((\([0-9, ]+\)|[0-9]+)\s*,", src):
        n = 1
        for d in shape.strip("()").replace(" ", "").strip(",").split(","):
            n *= int(d)
        total += 8 * n
    return total


def _zeroed_scratch(v, params):
    return isinstance(v, ast.Call) and _dotted(v.func) == "RT.scratch" and not v.keywords and \
        len(v.args) == 5 and isinstance(v.args[4], ast.Constant) and v.args[4].value is True and \
        all(_host_expr(a, params) for a in v.args)


def _device_source(name, src):
    """Kernel `name`'s source as a device function d_<name>."""
    return src.replace(KERNEL_HEADER, DEVICE_HEADER, 1).replace(f"def {name}(", f"def d_{name}(", 1)


def _megakernel(run, kernels):
    """(name, module source, entry arguments) of the cooperative kernel running `run`."""
    params = []
    for _, _, args, test in run:
        for a in args + ([test] if test else []):
            if a not in params:
                params.append(a)
    p = {a: f"p{k}" for k, a in enumerate(params)}
    body = ["    grid_ = cuda.cg.this_grid()"]
    for k, (name, _, args, test) in enumerate(run):
        if k:
            body.append("    grid_.sync()")
        call = f"d_{name}({', '.join(p[a] for a in args)})"
        body += [f"    if {p[test]}:", f"        {call}"] if test else [f"    {call}"]
    devices = "".join("\n\n" + _device_source(n, kernels[n]) for n in dict.fromkeys(r[0] for r in run))
    comment = "one launch: " + " ".join(r[0] for r in run)

    def render(name):
        return f"\ndef {name}({', '.join(p[a] for a in params)}):\n" + "\n".join(body) + "\n" + devices
    name, src = named(render, comment)
    return "m" + name[1:], src.replace(f"def {name}(", f"def m{name[1:]}(", 1), params


def fuse_launches(entry_src, kernels):
    """(entry source, kernels) with each run of two or more launches as one launch."""
    fn = ast.parse(entry_src).body[0]
    kernels = dict(kernels)
    f = _Fuser(kernels, {a.arg for a in fn.args.args})
    for node in fn.body:
        f.statement(node)
    f.flush()
    kernels.update(f.fused)
    fn_head = entry_src.split("\n", 1)[0]
    text = "\n".join(f.out)
    read = set(re.findall(r"\b_f[0-9]+\b(?! = )", text))
    out = [st for st in f.out if not (re.match(r"_f[0-9]+ = ", st) and st.split(" = ", 1)[0] not in read)]
    body = "".join("    " + line + "\n" for st in out for line in st.split("\n"))
    used = set(re.findall(r"\b[km]_[0-9a-f]{16}\b", body))    # kernels launched on their own
    return fn_head + "\n" + body, {k: v for k, v in kernels.items() if k in used}
