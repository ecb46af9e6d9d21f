"""Loads the compiled library ``fastmtl._C`` once, or records why it could not be loaded."""

from __future__ import annotations

import os
import warnings

_LOAD_ERROR: BaseException | None = None

try:
    from . import _C  # noqa: F401  (importing registers torch.ops.fastmtl.*)
except (ImportError, OSError) as exc:  # pragma: no cover - depends on the build
    _LOAD_ERROR = exc
    if os.environ.get("FASTMTL_REQUIRE_NATIVE", "0") not in ("", "0"):
        raise ImportError(
            "FASTMTL_REQUIRE_NATIVE is set but the compiled library fastmtl._C could not be "
            f"loaded: {exc}. Build it with `pip install --no-build-isolation -e .`."
        ) from exc
    warnings.warn(
        f"fastmtl._C could not be loaded ({exc}); fastmtl falls back to its pure-PyTorch "
        "reference implementations, which are correct but slower.",
        RuntimeWarning,
        stacklevel=2,
    )


def native_available() -> bool:
    """True when the compiled kernels (``torch.ops.fastmtl``) are loaded."""
    return _LOAD_ERROR is None


def load_error() -> BaseException | None:
    """Why the compiled library failed to load, or None."""
    return _LOAD_ERROR
