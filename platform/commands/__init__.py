"""Click commands of the `dermground` CLI, one module per command (imported lazily)."""
