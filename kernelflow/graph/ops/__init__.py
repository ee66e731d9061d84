"""Every op family; importing this package defines every op in the registry.

The builders (``add``, ``matmul``, ``softmax_cross_entropy``...) are re-exported here and
from the top-level ``kernelflow`` namespace; the summaries stay in their own namespace
(``kf.summary.scalar``).
"""

from . import (  # noqa: F401
    control_flow,
    conv,
    elementwise,
    indexing,
    linalg,
    movement,
    nn,
    random,
    recurrent,
    reduce,
    search,
    state,
    summary,
    training,
)
from .elementwise import *  # noqa: F403
from .linalg import *  # noqa: F403
from .movement import *  # noqa: F403
from .movement import getitem
from .nn import *  # noqa: F403
from .random import *  # noqa: F403
from .recurrent import *  # noqa: F403
from .reduce import *  # noqa: F403
from .search import *  # noqa: F403
from .state import *  # noqa: F403
from .training import *  # noqa: F403

# Every op family, once: graph/ops/<family>.py declares its ops, kernels/<family>.py implements them
# (kernels.registry loads the kernels of exactly these; tests/ops/test_registry.py checks both sides).
FAMILIES = ("elementwise", "reduce", "movement", "indexing", "linalg", "conv", "nn", "random", "state", "training",
            "control_flow", "search", "recurrent", "summary")

__all__ = (elementwise.__all__ + linalg.__all__ + movement.__all__ + nn.__all__ + reduce.__all__
           + state.__all__ + random.__all__ + training.__all__ + search.__all__ + recurrent.__all__ + ["getitem"])
