"""A Hugging Face ``datasets`` dataset saved with ``save_to_disk``: an image feature (or a column of paths or
bytes) and one or several text columns (strings or lists of strings); a ``DatasetDict`` by ``--split``."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from mmcontrast.errors import UserError

from . import Record, SourceOptions, captions_of
from .table import image_value


class HFSource:
    format = "hf"

    def __init__(self, path: Path, options: SourceOptions):
        import datasets
        try:
            ds = datasets.load_from_disk(str(path))
        except FileNotFoundError as e:
            raise UserError(f"{path} is not a dataset saved with save_to_disk ({e})") from None
        if isinstance(ds, datasets.DatasetDict):
            if options.split not in ds:
                raise UserError(f"{path} has no split {options.split!r} (splits: {list(ds)}); give --split")
            ds = ds[options.split]
        wanted = [options.image_col, *options.caption_cols] + ([options.id_col] if options.id_col else [])
        missing = [c for c in wanted if c not in ds.column_names]
        if missing:
            raise UserError(f"{path} has no column {', '.join(map(repr, missing))} (columns: {ds.column_names}); "
                            f"name them with --image-col / --caption-col / --id-col")
        if isinstance(ds.features[options.image_col], datasets.Image):
            ds = ds.cast_column(options.image_col, datasets.Image(decode=False))  # bytes as stored, not PIL
        self.ds = ds.select_columns(list(dict.fromkeys(wanted)))
        self.path, self.options, self.total = path, options, len(ds)

    def records(self, start: int = 0) -> Iterator[Record]:
        o, base, n = self.options, self.path.resolve(), start
        for batch in self.ds.select(range(start, self.total)).iter(batch_size=256):
            for i in range(len(batch[o.image_col])):
                image = image_value(batch[o.image_col][i], base)
                captions = [c for col in o.caption_cols for c in captions_of(batch[col][i])]
                rid = str(batch[o.id_col][i]) if o.id_col else str(n)
                yield Record(rid, image, captions, f"{self.path.name}[{n}]",
                             None if image is not None else "missing_image")
                n += 1
