"""FLOPs of a forward: the torch-free :mod:`medexport.core.flops`, under the model package's name."""

from ..core.flops import *  # noqa: F401,F403
from ..core.flops import flops_table, forward_flops  # noqa: F401
