"""cnmkit ipam package."""
