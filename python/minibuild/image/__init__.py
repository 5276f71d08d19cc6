"""Layered, reproducible OCI images without a daemon (`invoke image`); see docs/images.md."""
from .auth import AuthError
from .stages import ImageBuildError
from .command import build_images, lock_images
from .gitfiles import SourceFileError
from .push import push_stage
from .debbase import BaseError
from .layers import RecipeError
from .pull import PullError
from .registry import RegistryError
from .tarlayer import LayerError
from .pylock import WheelLockError

#: Everything `invoke image` reports as a clear one-line error instead of a traceback.
IMAGE_ERRORS = (AuthError, ImageBuildError, BaseError, RecipeError, RegistryError, LayerError, WheelLockError,
                PullError, SourceFileError, ValueError)

__all__ = ["build_images", "lock_images", "push_stage", "IMAGE_ERRORS"]
