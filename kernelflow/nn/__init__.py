"""Graph builders: initialisers, layers, losses, optimisers. Imports graph only."""

from . import init, layers, optim, recurrent
from .recurrent import GRU, LSTM, Bidirectional, GRUCell, LSTMCell, SimpleRNN, SimpleRNNCell

__all__ = ["init", "layers", "optim", "recurrent", "LSTM", "GRU", "SimpleRNN", "LSTMCell", "GRUCell", "SimpleRNNCell",
           "Bidirectional"]
