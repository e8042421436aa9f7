"""ptrack: track any point through a video with state-of-the-art models.

Python API (the CLI is a thin layer over it)::

    from pointtrack_cli import track, load_tracks
    result = track("video.mp4", grid=20, model="lk")   # TrackResult, tracks [T, N, 2] in pixels
"""
__version__ = "0.1.0"

from .errors import PtrackError  # noqa: E402
from .result import TrackResult, load_tracks  # noqa: E402


def track(*args, **kwargs):  # noqa: D103 - documented in api.track
    from .api import track as _track

    return _track(*args, **kwargs)


track.__doc__ = "See :func:`pointtrack_cli.api.track`."

__all__ = ["PtrackError", "TrackResult", "load_tracks", "track", "__version__"]
