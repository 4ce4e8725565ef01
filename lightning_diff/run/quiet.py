"""Third-party messages a lightning_diff user cannot act on, filtered by their exact text.

Each entry names one message and why it is noise here; anything else (including every other
warning from the same libraries) still shows. Entry points call :func:`quiet_third_party`
once, before they build anything.
"""

import logging
import re
import warnings

# (message prefix, why it says nothing actionable to a lightning_diff user)
NOISE_WARNINGS = (
    (
        "The `srun` command is available on your system but is not used.",
        "Lightning says this on any machine with SLURM's client installed, login nodes and the "
        "local test cluster included; slurm/ runs every cluster job through srun",
    ),
    (
        "`LightningModule.configure_optimizers` returned `None`, this fit will run with no optimizer",
        "closed-form families (empirical, Wiener, ridge) are fitted in setup and have nothing to optimize",
    ),
    (
        "`isinstance(treespec, LeafSpec)` is deprecated",
        "raised inside Lightning's own pytree helper by newer torch; nothing in this project uses LeafSpec",
    ),
)
NOISE_LOG_RECORDS = (
    (
        "lightning.pytorch.utilities.rank_zero",
        "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]",
        "an advertisement Lightning prints for every run; runs log to W&B",
    ),
)


class _DropMessage(logging.Filter):
    """Drops the records of one logger whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def quiet_third_party() -> None:
    """Install the filters (idempotent)."""
    for prefix, _why in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(prefix))
    for logger_name, prefix, _why in NOISE_LOG_RECORDS:
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, _DropMessage) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropMessage(prefix))
