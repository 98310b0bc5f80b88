"""Conventions shared across data, heads and evaluation (ARCHITECTURE.md, "Conventions")."""

# Semantic maps: 0 background, k + 1 for class k, and this value where a pixel is ignored
# (crowd regions, batch padding); losses and metrics skip it.
SEMANTIC_IGNORE = 255
