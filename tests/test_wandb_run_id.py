"""Opening the W&B run waits while a requeued job's previous attempt still holds the run ID."""

import pytest

from lightning_diff.run import lifecycle


class FlakyLogger:
    """A logger whose W&B run is refused ``refusals`` times with ``message``, then opens."""

    def __init__(self, refusals: int, message: str) -> None:
        self.refusals = refusals
        self.message = message
        self.calls = 0

    @property
    def experiment(self) -> str:
        self.calls += 1
        if self.calls <= self.refusals:
            raise RuntimeError(self.message)
        return "run"


def test_waits_while_the_run_id_is_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle, "WANDB_ID_POLL_S", 0.0)
    logger = FlakyLogger(3, "run ID 79376c72 is in use")
    lifecycle.open_wandb_run(logger)
    assert logger.calls == 4


def test_other_errors_and_a_held_id_past_the_deadline_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle, "WANDB_ID_POLL_S", 0.0)
    with pytest.raises(RuntimeError, match="permission denied"):
        lifecycle.open_wandb_run(FlakyLogger(1, "permission denied"))
    monkeypatch.setattr(lifecycle, "WANDB_ID_WAIT_S", 0.0)
    with pytest.raises(RuntimeError, match="is in use"):
        lifecycle.open_wandb_run(FlakyLogger(10**6, "run ID 1 is in use"))
