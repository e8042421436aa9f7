"""Video in, results out: streaming readers and atomic writers."""
from .video import VideoReader, open_video

__all__ = ["VideoReader", "open_video"]
