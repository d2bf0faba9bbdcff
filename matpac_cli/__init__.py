"""matpac: tag and embed audio with the MATPAC family of self-supervised audio encoders.

The public API is importable without pulling torch in; heavy modules load on first use.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
