"""Graph builders: initialisers, layers, losses, optimisers. Imports graph only."""

from . import init, layers, optim

__all__ = ["init", "layers", "optim"]
