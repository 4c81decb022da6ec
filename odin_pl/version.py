"""The package's version (a leaf, so that files written anywhere in odin_pl can record it)."""

__version__ = "0.1.0"
