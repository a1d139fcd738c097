"""cnmkit client package."""
