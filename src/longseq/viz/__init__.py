"""Pictures of what the layers compute (attention patterns)."""
