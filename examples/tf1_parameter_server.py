"""The parameter-server program of the distributed TensorFlow talks, on the 8x8 digits:
a ps task holds the variables, worker tasks train a 64-100-10 ReLU network on them
(`tf.train.replica_device_setter`, `MonitoredTrainingSession`, `StopAtStepHook`),
asynchronously by default, synchronously with --sync (`SyncReplicasOptimizer`).
Only the import line differs from the TF1 program. flowjit maps the cluster onto MPI
ranks (README, "Distributed"): start it with one rank per task, 1 ps and 2 workers:

    mpiexec -n 3 python examples/tf1_parameter_server.py [--sync] [--last-step 600]
        [--ckpt DIR] [--lr 0.05] [--batch-size 50]

--job-name/--task-index may be given per rank (mpiexec's "A : B" form), as the TF1
programs did per process; left out, each rank takes its own task. The ps prints the
variables it served; each worker prints its steps, how many times another worker's
updates came in between two of its own (async), and the test accuracy.
"""
import time

import common
import flowjit as fj
import flowjit.compat.v1 as tf


def main(argv=None):
    ap = common.parser(__doc__, batch_size=50, lr=0.05)
    ap.add_argument("--ps-hosts", default="localhost:2222")
    ap.add_argument("--worker-hosts", default="localhost:2223,localhost:2224")
    ap.add_argument("--job-name", default=None)
    ap.add_argument("--task-index", type=int, default=None)
    ap.add_argument("--last-step", type=int, default=600, help="stop at this global step")
    ap.add_argument("--sync", action="store_true", help="SyncReplicasOptimizer")
    ap.add_argument("--ckpt", default=None, help="checkpoint directory (the chief writes it)")
    args = ap.parse_args(argv)

    ps_hosts = args.ps_hosts.split(",")
    worker_hosts = args.worker_hosts.split(",")
    cluster = tf.train.ClusterSpec({"ps": ps_hosts, "worker": worker_hosts})
    server = tf.train.Server(cluster, job_name=args.job_name, task_index=args.task_index)
    job, task = server.server_def.job_name, server.server_def.task_index

    if job == "ps":
        server.join()
        print(f"ps task {task}: served {', '.join(server.served_variables())}", flush=True)
        return None

    mnist = common.load_data(args)
    # every worker reads the whole training set, in its own order
    mnist.train = fj.data.Dataset(mnist.train.images, mnist.train.labels, seed=1000 + task)
    pixels = mnist.train.images.shape[1]
    is_chief = task == 0

    with tf.device(tf.train.replica_device_setter(worker_device=f"/job:worker/task:{task}",
                                                  cluster=cluster)):
        global_step = tf.train.get_or_create_global_step()
        x = tf.placeholder(tf.float32, [None, pixels])
        y_ = tf.placeholder(tf.float32, [None, 10])
        W1 = tf.Variable(tf.truncated_normal([pixels, 100], stddev=0.1, seed=1), name="W1")
        b1 = tf.Variable(tf.zeros([100]), name="b1")
        W2 = tf.Variable(tf.truncated_normal([100, 10], stddev=0.1, seed=2), name="W2")
        b2 = tf.Variable(tf.zeros([10]), name="b2")
        hidden = tf.nn.relu(tf.matmul(x, W1) + b1)
        logits = tf.matmul(hidden, W2) + b2
        loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=y_, logits=logits))
        opt = tf.train.AdagradOptimizer(args.lr)
        if args.sync:
            n = len(worker_hosts)
            opt = tf.train.SyncReplicasOptimizer(opt, replicas_to_aggregate=n, total_num_replicas=n)
        train_op = opt.minimize(loss, global_step=global_step)
        correct = tf.equal(tf.argmax(logits, 1), tf.argmax(y_, 1))
        accuracy = tf.reduce_mean(tf.cast(correct, tf.float32))

    hooks = [tf.train.StopAtStepHook(last_step=args.last_step)]
    if args.sync:
        hooks.append(opt.make_session_run_hook(is_chief))
    seen = []
    t0 = time.perf_counter()
    with tf.train.MonitoredTrainingSession(master=server.target, is_chief=is_chief,
                                           checkpoint_dir=args.ckpt, hooks=hooks,
                                           save_checkpoint_secs=None) as sess:
        while not sess.should_stop():
            bx, by = mnist.train.next_batch(args.batch_size)
            _, step, train_loss = sess.run([train_op, global_step, loss], feed_dict={x: bx, y_: by})
            seen.append(int(step))
        elapsed = time.perf_counter() - t0
        acc = float(sess.run(accuracy, feed_dict={x: mnist.test.images, y_: mnist.test.labels}))
    # a worker's own update adds 1 to the global step it read; more means another worker's
    # updates landed in between
    interleaved = sum(1 for a, b in zip(seen, seen[1:]) if b - a > 1)
    print(f"worker task {task}{' (chief)' if is_chief else ''}: {len(seen)} steps in {elapsed:.1f} s, "
          f"global step {seen[-1] if seen else 0}, interleaved {interleaved} times, "
          f"last loss {float(train_loss):.4f}, test accuracy {acc:.4f}", flush=True)
    return acc


if __name__ == "__main__":
    main()
