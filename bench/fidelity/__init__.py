"""Multi-fidelity search against single fidelity, through the HTTP API (issue 10)."""
