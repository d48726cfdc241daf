"""The project-layout example's entry point: builds the model (model.py), trains it with
the losses of losses.py, evaluates every epoch, and saves / resumes a checkpoint (the
weights, the optimizer state and where the data order stands) with
fj.train.Checkpoint (--ckpt).

    python examples/project_layout/train.py [--epochs 15] [--ckpt /tmp/pl/ckpt]
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:          # run as a script: find common.py and the package
    sys.path.insert(0, os.path.dirname(HERE))

import common  # noqa: E402
import flowjit as fj  # noqa: E402
from project_layout import losses  # noqa: E402
from project_layout.model import MLP  # noqa: E402


def main(argv=None):
    ap = common.parser(__doc__, epochs=15, batch_size=64, lr=0.005)
    ap.add_argument("--hidden", type=int, default=96)
    ap.add_argument("--l2", type=float, default=1e-5)
    ap.add_argument("--ckpt", help="checkpoint prefix: restored if it exists, saved after each epoch")
    args = ap.parse_args(argv)
    data = common.load_data(args)
    with common.session(args):
        model = MLP([data.train.images.shape[1], args.hidden, 10], seed=args.seed)
        opt = fj.optimizers.Adam(args.lr)
        ckpt = fj.train.Checkpoint(model=model.variables, optimizer=opt, data=data.train)
        if args.ckpt and os.path.exists(args.ckpt + ".index.json"):
            ckpt.restore(args.ckpt)
            print(f"restored {args.ckpt} at step {int(opt.iterations.numpy())}")

        @fj.jit
        def train_step(x, y):
            with fj.GradientTape() as tape:
                loss = losses.cross_entropy(y, model(x)) + losses.l2_penalty(model.variables, args.l2)
            opt.apply_gradients(zip(tape.gradient(loss, model.variables), model.variables))
            return loss

        @fj.jit
        def evaluate(x, y):
            return losses.accuracy(y, model(x))

        per_epoch = max(1, data.train.num_examples // args.batch_size)
        total = common.num_steps(args, data.train.num_examples)
        done, secs, loss, epoch = 0, 0.0, float("nan"), 0
        while done < total:
            n = min(per_epoch, total - done)
            loss, s = common.train(args, train_step, lambda: data.train.next_batch(args.batch_size), n,
                                   desc=f"epoch {epoch}", graph_args=None if epoch == 0 else False)
            done, secs, epoch = done + n, secs + s, epoch + 1
            acc = float(evaluate(data.test.images, data.test.labels))
            fj.summary.scalar("test_accuracy", acc, step=int(opt.iterations.numpy()))
            if args.ckpt:
                ckpt.save(args.ckpt)
        return common.report("project_layout", {"test_accuracy": acc, "final_loss": loss,
                                                "step": int(opt.iterations.numpy())}, secs, total)


if __name__ == "__main__":
    main()
