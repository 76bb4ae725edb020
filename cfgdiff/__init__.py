"""cfgdiff core: conditional DDPM with classifier-free guidance for reconstruction from partial observations.

Imports torch, numpy and pyarrow only (never ray, click or tensorboard).
"""

__version__ = "0.1.0"


def load(path: str, device: str = "cpu"):
    """Load a checkpoint directory; returns a ``Reconstructor`` with ``.reconstruct(cond, mask, ...)``."""
    from .api import load as _load

    return _load(path, device)


__all__ = ["__version__", "load"]
