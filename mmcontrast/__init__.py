"""mmcontrast: CLIP-style image–text contrastive pretraining and evaluation.

```python
import mmcontrast as mc
model, preprocess, tokenizer = mc.load("runs/demo/final")
clf = mc.ZeroShotClassifier(model, tokenizer, preprocess, ["cat", "dog"], mc.templates.OPENAI_IMAGENET)
```
"""

import importlib

# name → the submodule that defines it (None: the submodule itself), imported on first use (PEP 562), so that
# the shard tools (`mmcontrast.errors`, `mmcontrast.data`) start without open_clip, timm and transformers.
# No export shares its name with a submodule that is imported (`mmcontrast/convert.py` is only run):
# importing it would replace the export by the module.
_EXPORTS = {
    "OBJECTIVES": "objectives", "PRESETS": "presets", "UserError": "errors", "ZeroShotClassifier": "zeroshot",
    "build_class_weights": "zeroshot", "build_model": "model", "convert": "conversion", "create_model": "model",
    "list_presets": "presets", "load": "loading", "load_model_dir": "model_dir", "make_loader": "data",
    "make_objective": "objectives", "make_tokenizer": "tokenizer", "make_transforms": "transforms",
    "save_model_dir": "model_dir", "templates": None,
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mmcontrast' has no attribute {name!r}")
    module = importlib.import_module(f".{_EXPORTS[name] or name}", __name__)
    value = module if _EXPORTS[name] is None else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
