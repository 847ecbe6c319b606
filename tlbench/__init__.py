"""tlbench: which pretrained source model, adapted with which strategy, transfers best?

Plugin authors need only ``tlbench.api`` (``hookimpl``, the spec classes, the component base
classes and helpers; docs/plugins/api.md): what it exports is covered by the compatibility
promise (docs/plugins/compatibility.md). Importing tlbench does not import torch.
"""

import pluggy

# The one place the version is written: pyproject.toml reads it from here (a literal, so
# setuptools parses it without importing tlbench).
__version__ = "0.3.0.dev0"

hookimpl = pluggy.HookimplMarker("tlbench")

__all__ = ["hookimpl", "__version__"]
