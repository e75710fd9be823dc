"""Layer 5: the simulator host."""
