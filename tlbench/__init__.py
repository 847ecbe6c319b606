"""tlbench: which pretrained source model, adapted with which strategy, transfers best?

Plugin authors need only ``tlbench.hookimpl`` and the spec classes in ``tlbench.specs``;
everything that imports torch lives behind lazily loaded factories.
"""

import pluggy

# The one place the version is written: pyproject.toml reads it from here (a literal, so
# setuptools parses it without importing tlbench).
__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("tlbench")

__all__ = ["hookimpl", "__version__"]
