"""Example agents, their data, and the improvement loop run by ``agentstream demo``."""
