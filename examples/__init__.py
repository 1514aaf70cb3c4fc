"""Example agents and the quickstart run by ``agentstream demo``."""
