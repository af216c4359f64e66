"""PROXY protocol v1/v2: encode, incremental parse (pure, no I/O)."""
