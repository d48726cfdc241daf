"""`keras.models`, as TF2 programs import it (`tf.keras.models.Sequential`)."""
from .model import Model, Sequential  # noqa: F401
