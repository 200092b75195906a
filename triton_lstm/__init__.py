"""triton_lstm: TensorFlow's LSTMCell (peepholes, clips, projection) as fused Triton kernels."""
from triton_lstm.activations import ACTIVATIONS
from triton_lstm.cell import LSTMCell, LSTMStateTuple
from triton_lstm.functional import lstm_cell
from triton_lstm.reference import lstm_cell_reference

__version__ = "0.1.0"

__all__ = ["ACTIVATIONS", "LSTMCell", "LSTMStateTuple", "lstm_cell", "lstm_cell_reference", "__version__"]
