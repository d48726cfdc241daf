"""Graph -> simplified graph -> fused program -> backend executable."""
from ..passes.simplify import simplify
from ..passes.fusion import fuse
from ..backends.cpu.backend import compile_program


def build(graph):
    g = simplify(graph)
    prog = fuse(g)
    return prog, compile_program(prog)
