"""Run plumbing: the command line (one-line errors, checks, quiet output), the run directory and
its atomically written files, checkpoints, the verified-file cache, distributed launch, and
reading the finished runs of a sweep. Nothing here knows about diffusion or denoiser families."""
