"""triton_lstm: TensorFlow's LSTMCell (peepholes, clips, projection) as fused Triton kernels."""
from triton_lstm.activations import ACTIVATIONS
from triton_lstm.cell import LSTMCell, LSTMStateTuple
from triton_lstm.checks import DTypeError, ShapeError
from triton_lstm.functional import lstm_cell
from triton_lstm.lstm import LSTM
from triton_lstm.porting import load_keras, load_tf_checkpoint
from triton_lstm import ops  # noqa: F401  (registers the torch.library ops)
from triton_lstm.reference import lstm_cell_reference, lstm_sequence_reference
from triton_lstm.rnn import dynamic_rnn
from triton_lstm.sequence import lstm_sequence

__version__ = "0.1.0"

__all__ = ["ACTIVATIONS", "DTypeError", "LSTM", "LSTMCell", "LSTMStateTuple", "ShapeError", "dynamic_rnn",
           "load_keras", "load_tf_checkpoint", "lstm_cell", "lstm_cell_reference", "lstm_sequence",
           "lstm_sequence_reference", "__version__"]
