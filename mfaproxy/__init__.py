"""mfaproxy: a RADIUS multifactor-authentication proxy."""

__version__ = "0.1.0"
