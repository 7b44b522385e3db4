"""The dashboard's pages; each module has ``render(ctx)``."""
