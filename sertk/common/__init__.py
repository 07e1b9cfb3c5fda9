"""Small shared helpers: atomic file output, hashing, configs, logging."""
