"""Grids of runs: `cdcda sweep`'s points over one shared store, the canary sweeps and the canary
exposure audit (which trains adapters of its own)."""
