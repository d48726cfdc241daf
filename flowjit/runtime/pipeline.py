"""Graph -> simplified graph -> (forward[, backward]) fused programs -> executables."""
from dataclasses import dataclass

from ..passes.simplify import simplify
from ..passes.fusion import fuse
from ..passes.partition import partition
from ..backends.cpu.backend import compile_program


@dataclass
class Stage:
    program: object
    exe: object


def build(graph):
    """Returns (joint simplified graph, [forward stage, backward stage or None], split)."""
    g = simplify(graph)
    split = partition(g)
    if split is None:
        prog = fuse(g)
        return g, [Stage(prog, compile_program(prog))], None
    fwd = simplify(split.forward)
    # simplify may renumber; residual outputs keep their positions in fwd.outputs
    fprog = fuse(fwd)
    fprog.allow_inplace = False     # the backward reads the variables' old values
    bwd = simplify(split.backward)
    bprog = fuse(bwd)
    return g, [Stage(fprog, compile_program(fprog)), Stage(bprog, compile_program(bprog))], split
