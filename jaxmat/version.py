"""The jaxmat version (also written into every bundle)."""
__version__ = "0.1.0"
