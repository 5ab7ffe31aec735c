"""The training path: datasets, losses, metrics, training scripts, teacher labels, evaluation and export.

Nothing in the product path (``s2cnet.cropper`` and what it imports) imports from here; the
training path imports the model and inference modules freely.
"""
