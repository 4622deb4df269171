"""Domain errors of the gateway's service layer: inputs it refuses, whatever API they came through.

They know nothing of HTTP; :data:`gateway.errors.STATUS` gives each its status code.
"""

from __future__ import annotations

from cosyvoice import InvalidRequest


class UndecodableAudio(InvalidRequest):
    """The client's bytes are not audio we can decode (400 on synthesis routes, 415 on voice routes)."""


class UploadTooLarge(InvalidRequest):
    """Audio over ``limits.max_upload_bytes`` (HTTP 413)."""


class PathRefused(InvalidRequest):
    """A server-side path the settings do not allow: paths are off, or it leaves the prompt directory (HTTP 403)."""
