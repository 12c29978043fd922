"""The ``imgq`` command-line client."""
