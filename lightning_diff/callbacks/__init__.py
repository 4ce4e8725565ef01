"""Lightning callbacks: weight averaging, and (later) sampling and measuring during training."""
