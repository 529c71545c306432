"""Errors a user can cause, each with a message that says what to do.

Front ends catch :class:`InfluenceError` and show its message on one line; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class InfluenceError(Exception):
    """Base of every error a user can act on."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(InfluenceError):
    """A setting has a bad value; the message names the setting and where the value came from."""


class ModelNotFoundError(InfluenceError):
    """No model in the library matches a name or path."""


class ModelFormatError(InfluenceError):
    """A model's files are missing, broken or in a format we refuse to load."""


class EngineBusyError(InfluenceError):
    """The engine's queue is full: every batch slot is generating and ``queue_limit`` requests already wait.
    ``retry_after`` is an estimate, in seconds, of when a slot frees (a server answers 503 with it)."""

    def __init__(self, message: str, *, hint: str | None = None, retry_after: float = 1.0) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class LibraryError(InfluenceError):
    """A library operation (import, remove) cannot be done."""


class SessionError(InfluenceError):
    """A chat session file cannot be read, is not a session, or cannot be written; nothing was overwritten."""


class HubError(InfluenceError):
    """The Hub (or a mirror) cannot answer a request: unknown repo or revision, access denied, server error."""


class HubUnreachableError(HubError):
    """No answer from the Hub endpoint at all (no network, wrong mirror URL, offline mode)."""


class GatedRepoError(HubError):
    """The repo is gated: its license must be accepted on the Hub and a token of that account given."""


class DownloadError(InfluenceError):
    """A download cannot be planned or completed (checksum mismatch, disk full, a file that keeps failing)."""


class DownloadCancelled(DownloadError):
    """A download was cancelled; the partial files stay on disk and the same download resumes from them."""


class RemoteError(InfluenceError):
    """A remote engine (a named remote: vLLM, llama.cpp's server, Ollama, another ``influence serve``) could not
    be reached or refused or broke a request.

    ``reason`` says which failure it was, so front ends can word it and the gateway can answer with a fitting
    status: ``unreachable``, ``tls``, ``timeout``, ``auth``, ``not_found``, ``busy`` (429 or 503, with
    ``retry_after`` when the remote said), ``server`` (5xx), ``refused`` (another 4xx), ``interrupted`` (the stream
    broke or ended without a finish reason; ``partial_text`` holds what had arrived), ``protocol`` (a malformed
    answer) or ``config`` (e.g. the key's variable is not set).
    """

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        reason: str = "server",
        status: int | None = None,
        retry_after: float | None = None,
        partial_text: str = "",
    ) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason
        self.status = status
        """The remote's HTTP status, when it answered with one."""
        self.retry_after = retry_after
        self.partial_text = partial_text

    @property
    def interrupted(self) -> bool:
        """The reply started and then broke: what arrived is kept and shown as interrupted."""
        return self.reason == "interrupted"
