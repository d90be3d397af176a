"""L-C against masked and kd fine-tuning at the same wall time (``python -m bench.lc``)."""
