"""Runs experiments: Flower's simulation engine on Ray, the attack runs, and an in-process reference loop."""
