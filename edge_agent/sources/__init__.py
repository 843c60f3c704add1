"""Image sources of a camera: a watched folder or an OpenCV video stream, behind one small interface."""

from edge_agent.sources.base import Source, SourceItem, SourceState
from edge_agent.sources.folder import FolderSource
from edge_agent.sources.stream import StreamSource

__all__ = ["FolderSource", "Source", "SourceItem", "SourceState", "StreamSource"]
