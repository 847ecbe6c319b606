"""pytest plugin for tlbench plugin authors (fixtures are being added)."""
