"""From a name to verified weights on disk to a loaded module: registry and download, formats, loaded models."""
