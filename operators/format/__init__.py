"""The packed file format: byte codecs (codecs.py), the decode-once base of stored packed layers
(stored.py) and the checkpoint's save, load and manifest (checkpoint.py)."""
