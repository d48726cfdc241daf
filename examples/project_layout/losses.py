"""Losses and metrics, written with flowjit ops so they trace into the jitted step."""
import flowjit as fj


def cross_entropy(labels, logits):
    return fj.reduce_mean(fj.nn.softmax_cross_entropy_with_logits(labels, logits))


def l2_penalty(variables, weight):
    return weight * fj.add_n([fj.nn.l2_loss(v) for v in variables])


def accuracy(labels, logits):
    hit = fj.equal(fj.argmax(logits, 1), fj.argmax(labels, 1))
    return fj.reduce_mean(fj.cast(hit, fj.float32))
