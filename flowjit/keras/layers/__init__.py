"""`keras.layers`: every layer flowjit's Keras offers."""
from ..layer import InputLayer, Layer  # noqa: F401
from .core import (  # noqa: F401
    Activation, Add, Average, Concatenate, Dense, Dropout, Embedding, Flatten, Lambda, LeakyReLU, Maximum,
    Minimum, Multiply, ReLU, Reshape, Softmax, Subtract, add, concatenate,
)
from .conv import (  # noqa: F401
    AveragePooling1D, AveragePooling2D, AvgPool1D, AvgPool2D, Conv1D, Conv2D, Convolution1D, Convolution2D,
    GlobalAveragePooling1D, GlobalAveragePooling2D, GlobalAvgPool1D, GlobalAvgPool2D, GlobalMaxPool1D,
    GlobalMaxPool2D, GlobalMaxPooling1D, GlobalMaxPooling2D, MaxPool1D, MaxPool2D, MaxPooling1D, MaxPooling2D,
)
from .normalization import BatchNormalization, LayerNormalization  # noqa: F401
from .rnn import GRU, LSTM, Bidirectional, GRUCell, LSTMCell, SimpleRNN, SimpleRNNCell  # noqa: F401
