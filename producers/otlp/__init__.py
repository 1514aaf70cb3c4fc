"""OTLP ingest: capture any agent that exports OpenTelemetry traces and logs.

``decode`` turns OTLP protobuf and OTLP/JSON payloads into neutral dataclasses, ``dialects`` maps the
attribute dialects of the common instrumentations (OTel GenAI, OpenLLMetry, OpenInference, Agent
Lightning, AgentOps) onto agentstream's Span and Reward records, ``files`` reads exported OTLP JSON
files and Agent Lightning span dumps, and ``ingest`` publishes the records to Kafka.

Submodules are imported where they are used (no re-exports here), so reading a file does not load
the receiver's web and gRPC stacks.
"""
