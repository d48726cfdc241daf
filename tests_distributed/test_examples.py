"""examples/distributed_mlp.py on every rank of this suite's world (alone, or as the 2
ranks of `mpiexec -n 2`): it trains, and the ranks end with identical weights."""
import os
import sys

import flowjit as fj

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def test_distributed_mlp_example(capsys):
    sys.path.insert(0, EXAMPLES)
    try:
        import distributed_mlp
    finally:
        sys.path.remove(EXAMPLES)
    acc = distributed_mlp.main(["--steps", "200", "--no-progress"])
    assert acc >= 0.9
    out = capsys.readouterr().out
    if fj.distributed.rank() == 0:
        assert f"ranks={fj.distributed.world_size()}" in out and "identical_weights=True" in out
    else:
        assert "distributed_mlp:" not in out
