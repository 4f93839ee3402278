"""Errors that mean bad input or an unavailable resource, reported to users as one line."""


class SdedragError(Exception):
    """Base class: the CLI prints the message on one line and exits with status 2."""


class InputError(SdedragError, ValueError):
    """A user-supplied file, value or combination of values is unusable."""


class ModelLoadError(SdedragError):
    """A model id or folder could not be loaded."""
