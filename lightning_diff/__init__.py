"""lightning_diff: what does a diffusion model generate, and why?

Train any denoiser family with one shared diffusion objective, compare what it generates
with what theory predicts, and measure realism and copying of every run.
"""

__version__ = "0.1.0"

from lightning_diff.run.config_resolvers import register as _register_resolvers

_register_resolvers()
