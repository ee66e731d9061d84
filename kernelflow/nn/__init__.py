"""Graph builders: initialisers, layers, losses, metrics, optimisers, models. Imports graph only.

The layer classes live here (``kf.nn.Dense``, ``kf.nn.LSTM``) and in ``kf.layers`` beside the
function builders (``kf.layers.dense``); decoding (beam search, greedy) in ``kf.nn.decoding``.
"""

from . import callbacks, decoding, init, layers, losses, optim, recurrent
from . import models as nn_models
from .attention import MultiHeadAttention
from .conv_layers import AvgPool2D, Conv1D, Conv2D, Conv2DTranspose, GlobalAvgPool2D, MaxPool2D
from .core import Activation, Add, Concatenate, Dense, Dropout, Embedding, Flatten, Reshape
from .decoding import beam_search, gather_tree, greedy_decode, tile_batch
from .layer_base import L1, L1L2, L2, Input, Layer, Regularizer, SymbolicTensor, defaults
from .nesting import ModelLayer
from .norm import BatchNormalization, LayerNormalization
from .recurrent import GRU, LSTM, Bidirectional, GRUCell, LSTMCell, SimpleRNN, SimpleRNNCell

LAYERS = ["Dense", "Conv1D", "Conv2D", "Conv2DTranspose", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "Flatten",
          "Reshape", "Dropout", "BatchNormalization", "LayerNormalization", "Embedding", "MultiHeadAttention", "Add",
          "Concatenate", "Activation", "SimpleRNN", "LSTM", "GRU", "Bidirectional"]

__all__ = ["init", "layers", "optim", "callbacks", "losses", "nn_models", "recurrent", "decoding",
           "Layer", "SymbolicTensor", "Input", "defaults", "Regularizer", "L1", "L2",
           "L1L2", "Dense", "Conv1D", "Conv2D", "Conv2DTranspose", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D",
           "Flatten", "Reshape", "Dropout", "BatchNormalization", "LayerNormalization", "Embedding",
           "MultiHeadAttention", "Add", "Concatenate", "Activation",
           "beam_search", "greedy_decode", "gather_tree", "tile_batch", "LSTM", "GRU", "SimpleRNN", "LSTMCell",
           "GRUCell", "SimpleRNNCell", "Bidirectional", "ModelLayer"]
