"""cnmkit plugin package."""
