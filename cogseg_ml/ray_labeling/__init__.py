"""Labelling on Ray Data: see :mod:`cogseg_ml.ray` (the public entry point)."""

from cogseg_ml.backends.base import require_extra

require_extra("ray.data", "ray", "Ray Data labelling helpers")
require_extra("pyarrow", "ray", "Ray Data labelling helpers")
