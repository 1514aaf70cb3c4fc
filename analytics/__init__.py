"""Analytics over the ClickHouse tables: the dashboard, reports and exports."""
