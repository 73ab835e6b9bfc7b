"""The run store: the only package that imports MLflow (tracker, retry queue, run queries,
sweep parent/child runs, reference runs)."""
