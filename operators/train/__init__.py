"""Training: the loop (loop.py), fine-tuning methods that hold a compression (finetune.py:
none, masked, kd, lc, admm, hspg) and the compressors they use (compressors.py)."""
