"""The package version, read by the build backend and by ``context.library``."""

__version__ = "0.1.0"
