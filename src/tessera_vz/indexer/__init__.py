"""How the index gets written: inventory, header probes, Icechunk commits."""
