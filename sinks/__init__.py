"""ClickHouse sink: event topics into ClickHouse tables, exactly once, and the migrations that make
those tables. (The query gateway it serves while it owns a chDB directory is :mod:`agentstream.clickhouse`.)"""
