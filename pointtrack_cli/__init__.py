"""ptrack: track any point through a video with state-of-the-art models.

Python API (the CLI is a thin layer over it)::

    from pointtrack_cli import track, load_tracks
    result = track("video.mp4", grid=20, model="lk")   # TrackResult, tracks [T, N, 2] in pixels

The ensemble: ``pointtrack_cli.api.ensemble`` (the name ``pointtrack_cli.ensemble`` is its package).

The package is laid out along the data path; see the README's "Architecture" section.
"""
from .api import track, write_outputs
from .errors import PtrackError
from .result import TrackResult, load_tracks
from .version import __version__

__all__ = ["PtrackError", "TrackResult", "load_tracks", "track", "write_outputs", "__version__"]
