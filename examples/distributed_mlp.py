"""Data-parallel training of the MLP 64-128-10 on the 8x8 digits with `fj.distributed`:
every rank trains on its shard of the training set, `DistributedOptimizer` averages the
gradients across the ranks inside the compiled step (an MPI allreduce), and the ranks
keep identical weights. Rank 0 shows the progress bar and writes --logdir.

    mpiexec -n 2 python examples/distributed_mlp.py [--epochs 30] [--batch-size 64] [--lr 0.005]
    python examples/distributed_mlp.py          # alone: a world of one process

--batch-size is the global batch: each of N ranks takes batch-size / N examples a step,
so N ranks take the same steps as one process would.
"""
import numpy as np

import common
import flowjit as fj
from mlp_digits import build, compiled_steps


def main(argv=None):
    ap = common.parser(__doc__, epochs=30, batch_size=64, lr=0.005)
    ap.add_argument("--hidden", type=int, default=128)
    args = ap.parse_args(argv)
    D = fj.distributed
    D.init()
    rank, size = D.rank(), D.world_size()
    if args.batch_size % size:
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of the {size} ranks")
    args.no_progress = args.no_progress or rank != 0
    if rank != 0:
        args.logdir = None                  # (event files are written by rank 0 anyway)

    data = common.load_data(args)           # the same split on every rank (same seed)
    train = D.shard(data.train)             # every size-th example, from this rank's index
    with common.session(args):
        params = build(args.hidden, args.seed, data.train.images.shape[1])
        D.broadcast_variables(params, root=0)
        # the MLP example's step, with the gradients averaged over the ranks
        train_step, logits = compiled_steps(params, D.DistributedOptimizer(fj.optimizers.Adam(args.lr)))
        n = common.num_steps(args, data.train.num_examples)
        per_rank = args.batch_size // size
        loss, secs = common.train(args, train_step, lambda: train.next_batch(per_rank), n,
                                  graph_args=False)
        loss = float(D.allreduce(np.float64(loss), "mean"))        # the global batch's loss
        acc = common.accuracy(logits(data.test.images), data.test.labels)
        weights = np.concatenate([p.numpy().reshape(-1) for p in params])
        same = bool(np.all(D.allgather(weights[None]) == weights))  # every rank: the same weights
        if rank == 0:
            common.report("distributed_mlp", {"test_accuracy": acc, "final_loss": loss, "ranks": size,
                                              "identical_weights": same}, secs, n)
        return acc


if __name__ == "__main__":
    main()
