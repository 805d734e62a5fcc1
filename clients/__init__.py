"""The client side: Flower ClientApp, local training, and defenses. Knows nothing of attacks."""
