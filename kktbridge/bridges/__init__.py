"""User-facing differentiable solves: an adapter paired with a residual map from ``core``."""
