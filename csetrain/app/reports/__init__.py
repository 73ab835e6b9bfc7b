"""Reports of runs: plots, text tables of stored runs, published baselines."""
