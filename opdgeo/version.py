"""The package version, in a module of its own: modules that print it (reports, the CLI)
import it from here, not from the package, whose ``__init__`` lazily imports the API."""

__version__ = "0.1.0"
