"""The application side: the `csetrain` command, Hydra composition, the run service (train and
eval runs), the run store (MLflow) and reports. The library (everything in csetrain/ outside
this package) never imports it."""
