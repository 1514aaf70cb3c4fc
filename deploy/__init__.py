"""How agentstream runs: the embedded broker, the supervised local stack (``agentstream up``), and
manifests for real deployments (``compose.yaml``, ``helm/``)."""
