"""Self-contained config/model classes copied next to a pruned checkpoint (``trust_remote_code=True``)."""
