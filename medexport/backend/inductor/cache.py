"""Where TorchInductor keeps what it compiled, so that a second process start reuses it.

Inductor's on-disk caches (the FX graph cache of generated code, the AOT autograd cache, the compiled Triton
kernels) live under ``TORCHINDUCTOR_CACHE_DIR``, by default a folder in /tmp that a reboot or a fresh container
loses. medexport points them at ``inductor/`` in its own cache folder (:func:`medexport.core.cache.cache_dir`:
``MEDEXPORT_CACHE_DIR``, else ``$XDG_CACHE_HOME/medexport``, else ``~/.cache/medexport``), unless the user has
set ``TORCHINDUCTOR_CACHE_DIR`` (that setting is theirs and wins). Entries are keyed by inductor itself (graph,
shapes, torch version, device), so a stale entry is never reused: a changed model or torch compiles afresh.

Torch reads the variable each time it needs the folder, so :func:`use_persistent_cache` runs before the first
compile (:class:`~medexport.backend.inductor.runner.CompiledRunner` calls it). :func:`cache_stats` says what this
process found there: hits (compiled code loaded) and misses (compiled and saved).
"""

from __future__ import annotations

import os
from pathlib import Path

from ...core.cache import cache_dir

#: torch's own variable: set by the user, it is left alone.
ENV = "TORCHINDUCTOR_CACHE_DIR"


def default_cache_dir() -> Path:
    """``inductor/`` in medexport's cache folder."""
    return cache_dir("inductor")


def use_persistent_cache() -> Path:
    """Point inductor's caches at :func:`default_cache_dir` unless ``TORCHINDUCTOR_CACHE_DIR`` names another
    folder than torch's temporary default, and turn on the FX graph and AOT autograd caches (torch's defaults,
    stated); the folder in use."""
    # Read before the imports below: importing torch._dynamo writes torch's own default (/tmp/torchinductor_USER)
    # into the variable, which is then no choice of the user's.
    before = os.environ.get(ENV)
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir as torch_default

    if not before or os.path.abspath(before) == os.path.abspath(torch_default()):
        os.environ[ENV] = str(default_cache_dir())
    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    return Path(os.environ[ENV])


def cache_stats() -> dict:
    """What this process's compiles found in the cache: {"dir", "hits", "misses"} of the FX graph cache (one per
    compiled graph; a graph that was loaded skipped code generation and its compiler)."""
    from torch._dynamo.utils import counters

    graphs = counters["inductor"]
    return {
        "dir": os.environ.get(ENV),
        "hits": int(graphs["fxgraph_cache_hit"]),
        "misses": int(graphs["fxgraph_cache_miss"]),
    }


__all__ = ["ENV", "cache_stats", "default_cache_dir", "use_persistent_cache"]
