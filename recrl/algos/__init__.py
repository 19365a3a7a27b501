"""Algorithms: one self-contained file each (``conf/algo/<name>.yaml`` -> ``recrl/algos/<name>.py``)."""
