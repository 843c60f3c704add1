"""One module per page of the review app; each exposes ``render(ctx)``."""
