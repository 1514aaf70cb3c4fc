"""Topics: the catalogue (names, keys, configs), their administration, and reading and writing records."""
