"""rnnkit: recurrent neural networks on PyTorch, with the math of BPTT visible and verified.

Importing the package is cheap: submodules load torch and NumPy when they are imported
(and `rnnkit.TextModel` etc. on first use), so the CLI can choose thread settings before
torch starts.
"""

__version__ = "0.1.0"

# The Python API: name -> the module that defines it, imported on first access.
_API = {"TextModel": "rnnkit.tasks.text", "Forecaster": "rnnkit.tasks.forecast"}


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'rnnkit' has no attribute {name!r}")
