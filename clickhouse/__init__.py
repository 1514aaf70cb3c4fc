"""The ClickHouse access layer: connecting (chDB or a server) and the query gateway that the chDB owner serves."""
