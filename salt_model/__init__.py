"""salt_model: the pure-PyTorch core of salt-orchestrator (never imports Ray)."""
