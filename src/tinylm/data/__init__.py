"""Data: where text comes from (corpora, download, shakespeare), reading it (documents), preparing it into token
shards (prepare, shards) and reading those as batches (loader).

``prepare`` replaces only a data folder tinylm made; ``loader`` reads it as a resumable, seeded, DDP-aware stream of
(x, y) windows. Import the modules themselves (``from tinylm.data.loader import BatchLoader``): this package imports
nothing, so a command that only reads text does not load torch.
"""
