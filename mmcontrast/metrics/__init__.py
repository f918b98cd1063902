"""Pure metric functions, tested on hand-written matrices."""

from .classification import accuracy, classification_metrics, mean_per_class_recall
from .retrieval import chance_metrics, chance_recall, recall_at_k, retrieval_metrics, retrieval_ranks

__all__ = ["accuracy", "chance_metrics", "chance_recall", "classification_metrics", "mean_per_class_recall",
           "recall_at_k", "retrieval_metrics", "retrieval_ranks"]
