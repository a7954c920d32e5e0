"""Tevatron: dense retrieval for MS MARCO passage ranking."""
__version__ = "1.0.0"
