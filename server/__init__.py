"""The server side: Flower ServerApp, the capturing FedAvg strategy. Knows nothing of attacks."""
