"""`python -m dp_train predict`: metric depth for images, videos and folders of frames, with trained weights.

Modules by concern: `inputs` (what is read, where results go, nothing overwritten), `reading` (decoding and
resizing ahead of the network on threads; videos through OpenCV), `model` (the network for the weights, compile),
`runner` (batches through the network, focal lengths, one per clip, temporal stability), `outputs` (files written
behind the network, the summary), `threads` (the bounded queues between them), `command` (the command line)."""

from dp_train.inference.predict.command import add_arguments, run
from dp_train.inference.predict.model import load_model

__all__ = ["add_arguments", "load_model", "run"]
