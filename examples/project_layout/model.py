"""The model: a small MLP whose parameters live in one object, so the trainer, the
checkpoint and the loss functions can all reach them by name."""
import flowjit as fj


class MLP:
    def __init__(self, sizes, seed=0):
        fj.random.set_seed(seed)
        self.layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            w = fj.Variable(fj.random.truncated_normal((a, b), stddev=(2.0 / a) ** 0.5, seed=i), name=f"dense{i}/w")
            self.layers.append((w, fj.Variable(fj.zeros((b,)), name=f"dense{i}/b")))

    @property
    def variables(self):
        return [v for layer in self.layers for v in layer]

    def __call__(self, x):
        for i, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if i < len(self.layers) - 1:
                x = fj.nn.relu(x)
        return x
