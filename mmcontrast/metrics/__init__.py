"""Pure metric functions, tested on hand-written matrices."""

from .classification import accuracy, classification_metrics, mean_per_class_recall
from .compositional import (binomial_stderr, clip_benchmark_selection, macro_accuracy, paired_difference,
                            selection_chance, selection_correct, selection_metrics)
from .retrieval import chance_metrics, chance_recall, recall_at_k, retrieval_metrics, retrieval_ranks

__all__ = ["accuracy", "binomial_stderr", "chance_metrics", "chance_recall", "classification_metrics",
           "clip_benchmark_selection", "macro_accuracy", "mean_per_class_recall", "paired_difference",
           "recall_at_k", "retrieval_metrics", "retrieval_ranks", "selection_chance", "selection_correct",
           "selection_metrics"]
