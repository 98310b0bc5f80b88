"""Pluggable heads; each reads the shared backbone features and returns losses or predictions."""
from .fcn import FCNHead

__all__ = ["FCNHead"]
