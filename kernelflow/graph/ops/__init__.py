"""Every op family; importing this package defines every op in the registry.

The builders (``add``, ``matmul``, ``softmax_cross_entropy``...) are re-exported here and
from the top-level ``kernelflow`` namespace.
"""

from . import (
           control_flow,  # noqa: F401  (defines the control-flow ops)
           control_flow_api,
           elementwise,
           linalg,
           movement,
           nn,
           random,
           recurrent,
           reduce,
           search,
           state,
           training,
)
from .control_flow_api import *  # noqa: F403
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

__all__ = (control_flow_api.__all__ + elementwise.__all__ + linalg.__all__ + movement.__all__ + nn.__all__
           + reduce.__all__ + search.__all__ + state.__all__ + random.__all__ + recurrent.__all__ + training.__all__
           + ["getitem"])
