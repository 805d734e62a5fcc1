"""The attacker: threat models, gradient inversion, label recovery, priors.

It never imports `clients` or the private-data side of `fedsim.data`: everything it knows
arrives as a capture plus the knowledge its settings grant.
"""
