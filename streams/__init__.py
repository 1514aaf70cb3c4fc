"""Stream processors (Faust): rollout assembly, the triplet joiner and per-version metrics."""
