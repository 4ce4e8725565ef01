"""Base class of denoisers fitted from the training set in closed form (no SGD)."""

import torch
from torch import Tensor

from lightning_diff.denoisers.contract import Denoiser


class ClosedFormDenoiser(Denoiser):
    """A ``D(y, t)`` whose state is computed from the training data by :meth:`fit_data`.

    The fitted state lives in buffers, so it is saved in and restored from checkpoints like
    any weights; buffers whose size depends on the data (e.g. the stored training set) take
    the checkpoint's shape on load.
    """

    fit = "closed_form"

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def needs_fitting(self) -> bool:
        return not bool(self.fitted)

    def fit_data(self, x0: Tensor) -> None:
        """Fit from the training set ``x0`` of shape (N, *data_shape), then mark as fitted."""
        with torch.no_grad():
            self._fit(x0)
        self.fitted.fill_(True)

    def _fit(self, x0: Tensor) -> None:
        raise NotImplementedError

    def num_parameters(self) -> int:
        """Parameters plus the fitted buffers (for the memorizer: its training set); fixed helpers
        in submodules (random projections, exponent tables) are not fitted and not counted."""
        fitted = sum(b.numel() for name, b in self.named_buffers(recurse=False) if name != "fitted")
        return super().num_parameters() + fitted

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[no-untyped-def]
        for name, buf in self._buffers.items():
            incoming = state_dict.get(prefix + name)
            if buf is not None and incoming is not None and incoming.shape != buf.shape:
                self._buffers[name] = torch.empty_like(incoming, device=buf.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
