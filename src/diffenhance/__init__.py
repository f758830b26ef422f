"""diffenhance: conditional diffusion image restoration as a reproducible batch pipeline.

The library imports no prefect, dvc or boto3 at module import time, so it trains and samples
on a machine that has only torch, torchvision, torchmetrics, pillow, numpy, pandas and pyyaml.
"""

__version__ = "0.1.0"
