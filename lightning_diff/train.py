"""``python -m lightning_diff.train <hydra overrides>``: train or fit one denoiser
(:func:`lightning_diff.training.train`, which tests and the demo call as a plain function)."""

import hydra
from omegaconf import DictConfig

from lightning_diff.run.cli import CONF_DIR, check_command_line, exit_on_user_error
from lightning_diff.training import train


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(lambda: train(cfg))


if __name__ == "__main__":
    check_command_line("train")
    main()
