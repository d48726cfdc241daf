"""Keras's "Simple MNIST convnet" trained with `model.fit` (batch 128, Adam, categorical
crossentropy): the time of one epoch over 10,000 MNIST-shaped examples (2,000 with
--quick), flowjit.keras against Keras 3 on its JAX and PyTorch backends and against a
hand-written PyTorch eager loop, where installed.

Keras picks its backend once per process, so every framework trains in a child process
of its own: one untimed epoch (it compiles), then timed epochs; the children take turns,
twice each, and each row takes the median of its epochs. The model is the same in all:
Conv2D(32, 3x3, relu) / MaxPool 2x2 / Conv2D(64, 3x3, relu) / MaxPool 2x2 / Flatten /
Dropout(0.5) / Dense(10, softmax), 34,826 parameters."""
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from perf.common import Result, register

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 128


def data(n, seed=0):
    """n MNIST-shaped float32 images (n, 28, 28, 1) in [0, 1] with one-hot labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    proto = rng.random((10, 28, 28, 1)).astype(np.float32)
    x = np.clip(proto[y] + 0.3 * rng.standard_normal((n, 28, 28, 1)).astype(np.float32), 0, 1)
    return x, np.eye(10, dtype=np.float32)[y]


def keras_model(keras):
    from_layers = keras.layers
    return keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        from_layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
        from_layers.MaxPooling2D(pool_size=(2, 2)),
        from_layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
        from_layers.MaxPooling2D(pool_size=(2, 2)),
        from_layers.Flatten(),
        from_layers.Dropout(0.5),
        from_layers.Dense(10, activation="softmax"),
    ])


def run_keras(keras, n, epochs):
    x, y = data(n)
    model = keras_model(keras)
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    times = []
    for _ in range(epochs + 1):
        t0 = time.perf_counter()
        h = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
        times.append(time.perf_counter() - t0)
    return times, float(h.history["loss"][-1])


def run_torch(n, epochs):
    import torch
    x, y = data(n)
    tx, ty = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y.argmax(1))
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Conv2d(32, 64, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(1600, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-7)
    times, loss = [], None
    for _ in range(epochs + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(n)
        for i in range(0, n, BATCH):
            idx = perm[i:i + BATCH]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(tx[idx]), ty[idx])
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return times, float(loss)


def child(framework, n, epochs):
    if framework == "flowjit":
        import flowjit.keras as keras
        keras.utils.set_random_seed(0)
        return run_keras(keras, n, epochs)
    if framework == "torch":
        return run_torch(n, epochs)
    os.environ["KERAS_BACKEND"] = framework.split("-")[1]
    import keras
    keras.utils.set_random_seed(0)
    return run_keras(keras, n, epochs)


def _spawn(framework, n, epochs):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p))
    p = subprocess.run([sys.executable, "-m", "perf.bench_keras", framework, str(n), str(epochs)], cwd=REPO_ROOT,
                       env=env, capture_output=True, text=True, timeout=1200)
    if p.returncode != 0:
        return None, (p.stderr.strip().splitlines() or ["no output"])[-1]
    return json.loads(p.stdout.strip().splitlines()[-1]), None


def _available(module):
    import importlib.util
    return importlib.util.find_spec(module) is not None


@register
def bench_keras_convnet_fit(cfg):
    n, epochs, turns = (2000, 1, 1) if cfg.quick else (10000, 2, 2)
    peers = [f for f, mod in (("keras-jax", "jax"), ("keras-torch", "torch"), ("torch", "torch"))
             if _available(mod) and (f == "torch" or _available("keras"))]
    for f, why in (("keras-jax", "keras or jax"), ("keras-torch", "keras or torch"), ("torch", "torch")):
        if f not in peers:
            cfg.skip(f"{f} (keras convnet)", f"{why} not installed")
    epoch_times = {f: [] for f in ["flowjit"] + peers}
    first, loss = {}, {}
    for _ in range(turns):
        for f in list(epoch_times):
            out, err = _spawn(f, n, epochs)
            if out is None:
                cfg.skip(f"{f} (keras convnet)", f"failed: {err}")
                epoch_times.pop(f)
                continue
            times, loss[f] = out
            first.setdefault(f, times[0])
            epoch_times[f].extend(times[1:])
    if "flowjit" not in epoch_times:
        raise RuntimeError("flowjit's keras convnet child failed")
    med = {f: statistics.median(ts) for f, ts in epoch_times.items()}
    rows = []
    title = f"keras mnist convnet fit: epoch of {n} b{BATCH}"
    for f in peers:
        if f in med:
            rows.append(Result(f"{title} vs {f}", med["flowjit"], med[f], compile_s=first["flowjit"],
                               target="ratio >= 1", ok=med[f] >= med["flowjit"],
                               notes=f"{len(epoch_times[f])} epochs each; first epoch (compiles) flowjit "
                                     f"{first['flowjit']:.1f} s, {f} {first[f]:.1f} s; last loss flowjit "
                                     f"{loss['flowjit']:.3f}, {f} {loss[f]:.3f}"))
    if not rows:
        rows.append(Result(title, med["flowjit"], compile_s=first["flowjit"], target="faster than each peer",
                           notes=f"{len(epoch_times['flowjit'])} epochs; no peer installed; "
                                 f"first epoch {first['flowjit']:.1f} s"))
    return rows


if __name__ == "__main__":       # a child: python -m perf.bench_keras FRAMEWORK N EPOCHS
    times, last_loss = child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    print(json.dumps([times, last_loss]))
