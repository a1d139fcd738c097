"""cnmkit cli package."""
