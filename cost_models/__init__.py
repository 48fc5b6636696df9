"""Cost formulas per target family (forward FLOPs, training memory)."""
