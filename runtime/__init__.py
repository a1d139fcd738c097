"""cnmkit runtime package."""
