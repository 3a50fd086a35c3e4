"""Errors the loaders raise: one line, meant for users, never a torch traceback."""
from m3ddm.errors import InputError


class CheckpointError(InputError):
    """A checkpoint or its source cannot be used; the message says why and what to do."""
