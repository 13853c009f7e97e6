"""fastssl: contrastive and meta-learning self-supervised training at maximum throughput."""

__version__ = "0.1.0"
