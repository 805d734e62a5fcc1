"""Runs experiments: the Flower simulation engine on Ray (later: sweeps, deployments)."""
