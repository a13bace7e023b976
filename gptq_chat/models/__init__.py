"""Models on disk and where they come from: the catalog, hub downloads, the store, the built-in demo model."""
