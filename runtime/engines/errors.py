class EnginesError(RuntimeError):
    """An engines folder or backend cannot be used; the one-line message says why and what to do."""
