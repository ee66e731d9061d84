"""Graph builders: initialisers, layers, losses, optimisers. Imports graph only."""

from . import init, optim

__all__ = ["init", "optim"]
