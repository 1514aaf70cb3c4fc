"""Resources: versioned prompts, demonstrations and checkpoints, their labels, and the store that follows them."""
