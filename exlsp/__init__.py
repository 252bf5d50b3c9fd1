"""exlsp: the language server and command line of a local, offline coding assistant."""

__version__ = "0.1.0"
