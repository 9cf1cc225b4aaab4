"""Training: the Trainer and its loop, its checkpoints and run folder, evaluation, optimizers, the process's
device and precision, metrics and MFU accounting, the LR range test. Import the modules themselves
(``from tinylm.training.trainer import Trainer``); this package imports nothing, so reaching one module does not
load the others."""
