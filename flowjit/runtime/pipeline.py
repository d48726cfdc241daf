"""Graph -> simplified graph -> (forward[, backward]) fused programs -> executables.

The backend is chosen by the device the function is placed on: every backend
implements `compile_program(prog)` for the same backend-neutral `Program`."""
import importlib
from dataclasses import dataclass

from ..config import config
from ..passes.simplify import simplify
from ..passes.fusion import fuse
from ..passes.partition import partition
from ..passes.updates import products_into_updates

BACKENDS = {"CPU": "flowjit.backends.cpu.backend", "GPU": "flowjit.backends.cuda.backend"}


@dataclass
class Stage:
    program: object
    exe: object


def backend_for(device):
    return importlib.import_module(BACKENDS[device.kind if device is not None else "CPU"])


def build(graph, device=None):
    """Returns (joint simplified graph, [forward stage, backward stage or None], split)."""
    compile_program = backend_for(device).compile_program

    def stage(prog, what):
        exe = compile_program(prog)
        if config.log_device_placement:
            _log_placement(prog, exe, device.name if device is not None else _CPU_NAME, what)
        return Stage(prog, exe)

    graph.normalise_shapes()
    g = simplify(graph)
    split = partition(g)
    if split is None:
        prog = fuse(products_into_updates(g))
        return g, [stage(prog, "function")], None
    fwd = simplify(split.forward)
    # simplify may renumber; residual outputs keep their positions in fwd.outputs
    fprog = fuse(fwd)
    fprog.allow_inplace = False     # the backward reads the variables' old values
    bwd = simplify(split.backward)
    bprog = fuse(products_into_updates(bwd))
    return g, [stage(fprog, "forward"), stage(bprog, "backward")], split


_CPU_NAME = "/job:localhost/replica:0/task:0/device:CPU:0"


def _log_placement(prog, exe, device_name, what):
    describe = getattr(exe, "describe_placement", None)
    if describe is not None:
        lines = describe(device_name)
    else:
        lines = [line + f" -> {device_name}" for line in prog.describe().splitlines()]
    print(f"[flowjit] {what} placement:")
    for line in lines:
        print(f"[flowjit]   {line}")
