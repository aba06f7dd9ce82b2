"""Code that runs on the compute: one HPO trial of RAPIDS (GPU) or pandas/scikit-learn (CPU) training."""
