"""The wire APIs the server speaks, each a thin adapter of its own over the serving core."""
