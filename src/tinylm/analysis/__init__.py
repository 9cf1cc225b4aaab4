"""Analysis of finished runs: reports, sweeps and scaling fits go here (the next issues add them)."""
