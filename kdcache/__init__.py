"""kdcache: offline knowledge distillation from a verifiable teacher-logit cache."""

__version__ = "0.1.0"
