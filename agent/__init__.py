"""The reconciling agent: makes this host's kernel agree with the store (see agent/reconcile.py)."""
