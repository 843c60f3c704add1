"""Exception hierarchy shared by the edge agent, training and export."""


class LinewatchError(Exception):
    """Base class of every error linewatch raises on purpose."""


class ImageDecodeError(LinewatchError):
    """An image file could not be read: empty, truncated, not an image, or unsupported."""


class BundleError(LinewatchError):
    """A model bundle is missing, corrupt or does not match its manifest."""


class ConfigError(LinewatchError):
    """A configuration file is invalid; the message names the key path."""
