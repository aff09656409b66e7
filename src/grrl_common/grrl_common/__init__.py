"""Pieces every grrl package shares: the topic/QoS contract and the node runtime."""
