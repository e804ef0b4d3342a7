"""Simulated scanner: brain-shaped volumes with known motion, written as a scanner would write them."""
