"""Storage backends behind the `Store` protocol of `base.py`."""
