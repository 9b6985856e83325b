"""proxyindex: one package index URL for private packages and a cached upstream PyPI."""

__version__ = "0.1.0"
