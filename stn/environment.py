"""The environment every command composes its configs in. `set_up()` prepares what the configs
read: the project root (`${oc.env:STN_ROOT}`, stn.paths.ROOT unless STN_ROOT is set, to put runs
elsewhere), the resolvers (`new_dir`, which gives every run its own folder, `run_label`, the SLURM
launcher's), and the log and warning filters. Every entry point calls it before Hydra composes a
config (stn/entry.py); scripts and notebooks that compose the project's configs themselves call it
first too."""

import logging
import os
import warnings

from omegaconf import OmegaConf

from stn.paths import ROOT
from stn.runs.folders import job_label, new_run_dir, run_label


class _NoAdvertising(logging.Filter):
    """Lightning's tips for its cloud products, printed at every start: not what a run has to say."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


_NO_ADVERTISING = _NoAdvertising()  # one instance: adding it again is a no-op


class _SacctOnce(logging.Filter):
    """submitit asks `sacct` for its jobs' states at every poll and warns each time it cannot (a
    cluster without an accounting database, as `make slurm-up`'s): the first warning says it, the
    same words fifteen times more do not (it then reads the states from the jobs' own files)."""

    def __init__(self) -> None:
        super().__init__()
        self.told = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" not in str(record.msg):
            return True
        told, self.told = self.told, True
        return not told


_SACCT_ONCE = _SacctOnce()


def set_up() -> None:
    """Environment, resolvers and filters for the project's configs and runs (idempotent)."""
    os.environ.setdefault("STN_ROOT", str(ROOT))
    # logger=mlflow keeps a local file store (outputs/mlruns: no server, no database), which MLflow 3
    # accepts only when asked to
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    # cached in the config, so every job of a sweep (and a requeued job) resolves the same folder
    OmegaConf.register_new_resolver("new_dir", new_run_dir, use_cache=True, replace=True)
    # what a SLURM job asks for (conf/hydra/launcher/slurm.yaml): a GPU per task only for a GPU trainer,
    # and as many CPUs as the job's torch threads
    OmegaConf.register_new_resolver(
        "slurm_gpus_per_task",
        lambda accelerator: 1 if str(accelerator) in ("gpu", "cuda") else None,
        replace=True,
    )
    OmegaConf.register_new_resolver(
        "slurm_cpus_per_task", lambda num_threads: int(num_threads) if num_threads else 1, replace=True
    )
    # the run's name after its time: its data and model choices and its overrides (conf/hydra/default.yaml)
    OmegaConf.register_new_resolver("run_label", run_label, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("job_label", job_label, use_cache=True, replace=True)
    quiet_known_noise()


def quiet_known_noise() -> None:
    """The log and warning filters alone (idempotent): a parallel sweep's worker process composes its
    job's config before any function of the project runs in it, so stn/entry.py installs them when
    it is imported (a worker imports it to run the task)."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NO_ADVERTISING)
    logging.getLogger("submitit").addFilter(_SACCT_ONCE)
    # a deprecation inside Lightning itself (its pytree helper), nothing the user can act on
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # conf/hydra/launcher/joblib.yaml sets the launcher's options under the
    # name users type (hydra/launcher=joblib), which is also the plugin's schema name: Hydra validates
    # them against it, as intended, and warns at every compose (four times in a joblib sweep)
    warnings.filterwarnings(
        "ignore",
        message=r"\s*'hydra/launcher/\w+' is validated against ConfigStore schema with the same name",
    )


def lightning_lines_once() -> None:
    """Lightning's package gives the `lightning` logger a console handler of its own when it is
    imported, and its records also reach the handlers Hydra gave the root logger, so `Seed set to 0`
    and the GPU/TPU lines would show twice: under Hydra's logging, the root's handlers alone (its
    console and the run's log file) show them."""
    import lightning  # noqa: F401  (its import adds the handler)

    if logging.getLogger().handlers:
        own = logging.getLogger("lightning")
        for handler in [h for h in own.handlers if type(h) is logging.StreamHandler]:
            own.removeHandler(handler)
