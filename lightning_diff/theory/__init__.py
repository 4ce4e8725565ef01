"""What each denoiser family should generate, and checks of runs against it.

- ``linear``: the exact Gaussian a linear denoiser generates on a finite grid (any sampler);
- ``support``: distances to a subspace, to the training set, to a decoder's image;
- ``moments``: point sets with equal moments up to a chosen order (the polynomial claim);
- ``empirical``: how surely the Bayes-optimal denoiser copies a training point;
- ``check``: comparison objects the training entry point calls (``theory:`` in the config);
- ``figures``: the PNGs those comparisons write.

Derivations: docs/theory.md.
"""
