"""cnmkit drivers package."""
