"""What every layer shares and nothing of ours defines below it: the model's facts and the error vocabulary.

Imports nothing of the project, so ``kernels/``, ``runtime/`` and ``export/`` (the model included) can all
rely on it without reaching into each other.
"""
