"""M3DDM outpainting runtime: no torch, engines behind a small backend interface."""
