"""Diagnostics of the training machinery: tinylm doctor, tinylm profile, the NaN hunt, the SIGKILL crash harness.
Import the modules themselves (``from tinylm.diagnostics.doctor import doctor``)."""
