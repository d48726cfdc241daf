"""`keras.models`, as TF2 programs import it (`tf.keras.models.Sequential`)."""
from .model import Model, Sequential  # noqa: F401
from .saving import load_model, save_model  # noqa: F401
