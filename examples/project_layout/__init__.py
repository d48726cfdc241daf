"""A trainer split the way a real project is: model.py (parameters and the forward
pass), losses.py (loss and metrics), train.py (data, the jitted step, checkpoints)."""
