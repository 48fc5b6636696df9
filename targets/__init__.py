"""Device descriptions (TOML files) and their loader."""
