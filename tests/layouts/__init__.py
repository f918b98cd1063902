"""Small datasets written in the on-disk layouts the classification readers know, from real photos that ship
inside PyPI wheels (``tests/real_images.py``), written the way torchvision and the datasets' own archives write
them. One module per reader family; each exposes ``WRITERS: {dataset name: write(root) -> expected}``."""
