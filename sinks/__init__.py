"""ClickHouse sink: event topics into ClickHouse tables, exactly once; migrations; the query
gateway that serves everyone else while the sink owns an embedded chDB directory."""
