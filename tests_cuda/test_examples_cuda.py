"""examples/cnn_digits.py with `--device gpu` (issue 22): both models' training steps
(and the evaluation function) run every op on GPU:0 -- the placement log shows a CUDA
kernel for each step and no "NumPy on the host" fallback.

Under the simulator the bundled digits' 359-image test set alone takes minutes to
evaluate, so the example reads a few of those 8x8 digits through its documented
`--mnist DIR` option (the four IDX files, which `fj.data.load_mnist` reads at any image
size): 8 training and 2 test images, the same 8x8 model layouts as on the digits, one
training step of batch 2 (the placement is logged when the step compiles).

The deep model's step is ~3-4 minutes under the simulator (conv2's 51,200-element filter
gradient, the 256x1024 dense layer and its Adam update, one Python thread per CUDA
thread), so there it runs only with FLOWJIT_SIM_SLOW=1; on a real GPU it always runs."""
import os
import re
import sys

import numpy as np
import pytest

import flowjit as fj
from flowjit.backends.cuda.runtime import SIM

pytest.importorskip("sklearn")
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
GPU = "/job:localhost/replica:0/task:0/device:GPU:0"
HOST = "NumPy on the host"
STEP = re.compile(r"^\[flowjit\]   step \d+: (.+) -> (\S+)(?: \(kernels (k_\w+(?:, k_\w+)*)\))?$")


def _example():
    if EXAMPLES not in sys.path:
        sys.path.insert(0, EXAMPLES)
    import cnn_digits
    return cnn_digits


@pytest.fixture(scope="module")
def tiny_digits(tmp_path_factory):
    """A few of the bundled 8x8 digits as the four MNIST IDX files (pixels 0..255)."""
    d = fj.data.load_digits(reshape=False, seed=0)
    out = tmp_path_factory.mktemp("tiny_digits")
    for part, ds, n in (("train", d.train, 8), ("t10k", d.test, 2)):
        images = np.rint(ds.images[:n, :, :, 0] * 255).astype(np.uint8)
        labels = ds.labels[:n].argmax(1).astype(np.uint8)
        for stem, arr in ((f"{part}-images-idx3-ubyte", images), (f"{part}-labels-idx1-ubyte", labels)):
            head = (0x0800 | arr.ndim).to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
            (out / stem).write_bytes(head + arr.tobytes())
    return str(out)


def placement_sections(log):
    """{"forward" / "backward" / "function": [(op text, device, kernels)]}, in log order;
    a section logged twice (two compiled functions) keeps both lists."""
    sections, cur = {}, None
    for line in log.splitlines():
        head = re.match(r"^\[flowjit\] (\w+) placement:$", line)
        if head:
            cur = []
            sections.setdefault(head.group(1), []).append(cur)
            continue
        if line.startswith("[flowjit]   step "):
            m = STEP.match(line)
            assert m and cur is not None, line
            cur.append((m.group(1), m.group(2), m.group(3)))
    return sections


@pytest.mark.parametrize("model,n_vars,ops", [
    ("small", 10, {"conv2d", "conv2d_backprop_input", "conv2d_backprop_filter", "matmul"}),
    pytest.param("deep", 8, {"conv2d", "conv2d_backprop_input", "conv2d_backprop_filter", "max_pool2d",
                             "max_pool2d_grad", "matmul"},
                 marks=[pytest.mark.slow, pytest.mark.skipif(
                     SIM and os.environ.get("FLOWJIT_SIM_SLOW", "") in ("", "0"),
                     reason="~4 minutes under the simulator: set FLOWJIT_SIM_SLOW=1 to run it")]),
])
def test_cnn_digits_runs_every_op_on_the_gpu(capsys, tiny_digits, model, n_vars, ops):
    ex = _example()
    before = fj.config.log_device_placement
    fj.config.log_device_placement = True
    try:
        acc = ex.main(["--device", "gpu", "--model", model, "--mnist", tiny_digits,
                       "--steps", "1", "--batch-size", "2", "--no-progress"])
    finally:
        fj.config.log_device_placement = before
    assert fj.config.log_device_placement == before
    log = capsys.readouterr().out
    assert HOST not in log, log
    assert f"{model} CNN on 8x8" in log, log
    assert f"cnn_digits ({model}): test_accuracy=" in log and "1 steps" in log, log
    assert 0.0 <= acc <= 1.0

    sec = placement_sections(log)
    # the training step (forward + backward with the Adam update) and `correct`
    assert len(sec.get("forward", [])) == 1 and len(sec.get("backward", [])) == 1, log
    assert len(sec.get("function", [])) == 1, log
    steps = [s for kind in ("forward", "backward", "function") for s in sec[kind][0]]
    for what, dev, kernels in steps:
        assert dev == GPU and kernels, (what, dev, kernels, log)
    # (an op with a fused epilogue logs as "conv2d + fused loop [add relu]")
    logged = {what.split(" + ")[0] for what, _, _ in steps}
    assert ops <= logged, (ops - logged, log)
    assert any("reduce_sum" in w for w, _, _ in sec["forward"][0]), log      # the loss
    # Adam: the update of each variable is a fused loop in the backward, on the GPU too
    adam = [w for w, _, _ in sec["backward"][0] if w.startswith("fused loop") and "sqrt add divide subtract" in w]
    assert len(adam) == n_vars, log
