"""How agentstream runs: the embedded broker, topic setup, the supervised local stack, and
manifests for real deployments (``compose.yaml``, ``helm/``)."""
