"""Lab topologies: one YAML file (containerlab's common subset plus cnmkit's ``cnmkit:`` keys)
deployed on the embedded runtime and the drivers, inspected, drawn and destroyed as a whole."""
