"""fedsim: a federated-learning simulator for measuring gradient-inversion leakage."""

__version__ = "0.1.0"
