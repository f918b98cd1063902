"""mmcontrast: CLIP-style image–text contrastive pretraining and evaluation.

```python
import mmcontrast as mc
model, preprocess, tokenizer = mc.load("runs/demo/final")
clf = mc.ZeroShotClassifier(model, tokenizer, preprocess, ["cat", "dog"], mc.templates.OPENAI_IMAGENET)
```
"""

import importlib
import sys
import types

# name → the submodule that defines it (None: the submodule itself), imported on first use, so that the
# shard tools (`mmcontrast.errors`, `mmcontrast.data`) start without open_clip, timm and transformers
_EXPORTS = {
    "OBJECTIVES": "objectives", "PRESETS": "presets", "UserError": "errors", "ZeroShotClassifier": "zeroshot",
    "build_class_weights": "zeroshot", "build_model": "model", "convert": "convert", "create_model": "model",
    "list_presets": "presets", "load": "load", "load_model_dir": "model_dir", "make_loader": "data",
    "make_objective": "objectives", "make_tokenizer": "tokenizer", "make_transforms": "transforms",
    "save_model_dir": "model_dir", "templates": None,
}
__all__ = sorted(_EXPORTS)


class _Package(types.ModuleType):
    def __getattr__(self, name: str):
        if name not in _EXPORTS:
            raise AttributeError(f"module 'mmcontrast' has no attribute {name!r}")
        module = importlib.import_module(f".{_EXPORTS[name] or name}", __name__)
        value = module if _EXPORTS[name] is None else getattr(module, name)
        self.__dict__[name] = value
        return value

    def __setattr__(self, name: str, value) -> None:
        # importing the submodule `mmcontrast.load` (or `.convert`) sets an attribute of that name: the
        # function `mc.load` must not be replaced by its module
        if _EXPORTS.get(name) == name and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(self.__dict__) | set(_EXPORTS))


sys.modules[__name__].__class__ = _Package
