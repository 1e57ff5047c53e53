"""rnnkit: recurrent neural networks on PyTorch, with the math of BPTT visible and verified.

Importing the package is cheap: submodules (`rnnkit.cells`, `rnnkit.recurrent`,
`rnnkit.models`, `rnnkit.reference`) load torch/NumPy when they are imported, so the CLI can
choose thread settings before torch starts.
"""

__version__ = "0.1.0"
