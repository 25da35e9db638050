"""Reviewing labels: a static page to accept or reject masks, and applying its decisions.

:mod:`~cogseg_ml.review.decisions` holds the decisions file (format, loading, applying);
:mod:`~cogseg_ml.review.page` builds the page (``cogseg review LABELS.json --out DIR``).
"""

from cogseg_ml.review.decisions import Decisions, apply_decisions, labels_digest, load_decisions

__all__ = ["Decisions", "apply_decisions", "labels_digest", "load_decisions"]
