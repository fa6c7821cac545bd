"""Small shared helpers: registries, optional imports, devices, atomic file writes."""
