"""SpFDE: sparse training with progressive layer freezing and circular data sieving."""

__version__ = "0.1.0"
