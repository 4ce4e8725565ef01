"""The one interface every denoiser family implements.

A denoiser is ``D(y, t) -> x0_hat``: ``y`` (B, *data_shape) noisy samples at noise variances
``t`` (B,). Beyond that, the rest of the project may ask a denoiser only what this class
declares, never look inside a family:

- ``conditioning``: how it knows the noise level: ``per_level`` (K networks, one per grid
  level, none sees t), ``conditioned`` (one network with a noise embedding) or ``blind``
  (one network that never sees t);
- ``fit``: ``closed_form`` (computed from the training set by :meth:`Denoiser.fit_data`,
  which the training module calls in ``setup`` while :attr:`Denoiser.needs_fitting`) or
  ``sgd`` (trained by the optimizer; an SGD family may still read data statistics in
  ``fit_data`` first, as the convex families' whitening does);
- ``accepts_any_t``: whether it is defined at noise levels off its training grid;
- :meth:`Denoiser.num_parameters`: the numbers that define it;
- :meth:`Denoiser.network_at`: the network that denoises at a level (theory checks use it).
"""

from torch import Tensor, nn

from lightning_diff.errors import UserError

CONDITIONING_MODES = ("per_level", "conditioned", "blind")
FIT_KINDS = ("closed_form", "sgd")


class Denoiser(nn.Module):
    """Base class of every family's outer module (see the module docstring)."""

    conditioning: str = "per_level"
    fit: str = "sgd"
    accepts_any_t: bool = False

    def __call__(self, y: Tensor, t: Tensor | None = None) -> Tensor:
        if t is None:
            raise UserError(
                f"{type(self).__name__} is a denoiser D(y, t): call it with the noise variances t, shape (B,), too"
            )
        return super().__call__(y, t)

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def needs_fitting(self) -> bool:
        """Whether :meth:`fit_data` must still run before the denoiser can be used."""
        return False

    def fit_data(self, x0: Tensor) -> None:
        """Fit from the training set (closed-form families; SGD families that precondition)."""
        raise UserError(f"{type(self).__name__} is trained by SGD (denoiser.fit=sgd): it has nothing to fit in closed form")

    def num_parameters(self) -> int:
        """The numbers that define the denoiser: all parameters (all K networks in per-level mode)."""
        return sum(p.numel() for p in self.parameters())

    def network_at(self, t: float) -> nn.Module:
        """The network that denoises at noise variance ``t`` (the denoiser itself unless it routes)."""
        return self


def check_choice(key: str, value: object, allowed: tuple[str, ...], family: str | None = None) -> None:
    """One :class:`UserError` when ``denoiser.<key>=value`` is not one of ``allowed`` (for ``family``:
    an option that exists but that family does not support)."""
    if not isinstance(value, str) or value not in allowed:
        verdict = f"not available for {family}" if family else "not valid"
        raise UserError(f"denoiser.{key}={value!r} is {verdict}; choose one of {', '.join(allowed)}")


def check_only_fit(fit: object, only: str, family: str) -> None:
    """One :class:`UserError` when ``denoiser.fit=fit`` asks ``family``, which has only the fit
    ``only`` (``closed_form`` or ``sgd``), for another."""
    if fit != only:
        how = "fitted in closed form only" if only == "closed_form" else "trained by SGD only"
        raise UserError(f"denoiser.fit={fit!r} is not available for {family}; it is {how}")
