"""Layered, reproducible OCI images without a daemon (`invoke image`); see docs/images.md."""
from .command import build_images, lock_images, push_stage

__all__ = ["build_images", "lock_images", "push_stage"]
