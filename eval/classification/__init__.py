"""Zero-shot classification sets from the files users already have on disk (layouts: ``docs/benchmarks.md``).

``open_classification(name, root, split)`` finds which of the dataset's known layouts ``root`` holds (the
first whose marker file or folder exists), reads it with that layout's reader, and attaches the class names
and templates the dataset uses in CLIP_benchmark. When no layout matches, one line lists every path looked
for. Readers live one family per module and register themselves in ``registry.DATASETS``.
"""

from .registry import DATASETS, DatasetSpec, Layout, open_classification, register

__all__ = ["DATASETS", "DatasetSpec", "Layout", "open_classification", "register"]
