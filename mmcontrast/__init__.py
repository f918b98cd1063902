"""mmcontrast: CLIP-style image–text contrastive pretraining and evaluation.

```python
import mmcontrast as mc
model, preprocess, tokenizer = mc.load("runs/demo/final")
clf = mc.ZeroShotClassifier(model, tokenizer, preprocess, ["cat", "dog"], mc.templates.OPENAI_IMAGENET)
```
"""

from . import templates
from .convert import convert
from .data import make_loader
from .errors import UserError
from .load import load
from .model import build_model, create_model
from .model_dir import load_model_dir, save_model_dir
from .objectives import OBJECTIVES, make_objective
from .presets import PRESETS, list_presets
from .tokenizer import make_tokenizer
from .transforms import make_transforms
from .zeroshot import ZeroShotClassifier, build_class_weights

__all__ = [
    "OBJECTIVES", "PRESETS", "UserError", "ZeroShotClassifier", "build_class_weights", "build_model",
    "convert", "create_model", "list_presets", "load", "load_model_dir", "make_loader", "make_objective",
    "make_tokenizer", "make_transforms", "save_model_dir", "templates",
]
