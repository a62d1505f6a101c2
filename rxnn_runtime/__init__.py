"""The reactive runtime for RxT models: sessions, batching, stores, the websocket/HTTP server and the CLI."""

# `rxnn --version` reads the installed distribution's metadata first; this is its fallback for a source tree that
# is not installed. tests/rxnn_runtime/test_cli.py keeps it equal to pyproject.toml's version.
__version__ = "0.1.0"
