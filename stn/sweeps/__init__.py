"""Sweeps: the checks a sweep passes before its first job (`checks`), the Optuna search behind
`hparams_search=optuna` (`optuna_search`), and how the jobs of a parallel sweep share a machine
(`job_share`). The Optuna sweeper itself is a Hydra plugin (hydra_plugins/stn_optuna_sweeper/)."""
