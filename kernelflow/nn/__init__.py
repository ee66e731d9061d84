"""Graph builders: initialisers, layers, losses, optimisers. Imports graph only."""

from . import decoding, init, layers, optim, recurrent
from .decoding import beam_search, gather_tree, greedy_decode, tile_batch
from .recurrent import GRU, LSTM, Bidirectional, GRUCell, LSTMCell, SimpleRNN, SimpleRNNCell

__all__ = ["init", "layers", "optim", "recurrent", "decoding", "beam_search", "greedy_decode", "gather_tree",
           "tile_batch", "LSTM", "GRU", "SimpleRNN", "LSTMCell", "GRUCell", "SimpleRNNCell",
           "Bidirectional"]
