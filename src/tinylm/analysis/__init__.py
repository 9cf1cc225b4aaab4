"""Analysis over runs: reports, sweeps, scaling studies and plans, read from run folders.

``report`` writes a run's report (or several runs compared) with the curve-health verdict of
``health``; ``sweep`` trains a grid x seeds and compares them with ``stats``; ``scaling`` is the
IsoFLOP study built on the sweep's runs; ``plan`` sizes a model, its time and cost from the device
table in ``gpus``. Each module draws its own figure (``tinylm.plotting``: matplotlib when installed).
Runs are read through ``tracking.read_metrics`` and their checkpoints; torch is imported only inside
the functions that load a model. Imports go one way: scaling -> sweep -> report -> health.
"""
