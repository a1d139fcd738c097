"""cnmkit store package."""
