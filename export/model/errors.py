"""Errors the loaders raise: one line, meant for users, never a torch traceback."""


class CheckpointError(RuntimeError):
    """A checkpoint or its source cannot be used; the message says why and what to do."""
