"""Hub failures as :class:`~influence_tui.core.errors.HubError` s with a hint: unreachable, gated, not found, HTTP."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from influence_tui.core.errors import GatedRepoError, HubError, HubUnreachableError, InfluenceError

if TYPE_CHECKING:
    import httpx


def _network_error(exc: BaseException) -> bool:
    """A failure to reach the server at all (refused, DNS, timeout, reset), whichever HTTP library raised it."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(
        names & {"TransportError", "NetworkError", "TimeoutException", "ConnectError", "ConnectionError", "Timeout"}
    ) or isinstance(exc, OSError)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    match = re.search(r"\[Errno -?\d+\] ([^\]\)']+)", text)
    if match:
        text = match.group(1)
    return text[:120].rstrip(". ").lower()


def unreachable(endpoint: str, exc: BaseException) -> HubUnreachableError:
    return HubUnreachableError(
        f"cannot reach the Hub at {endpoint}: {_reason(exc)}",
        hint="check the network connection; a mirror can be set with --mirror URL or INFLUENCE_MIRROR",
    )


def gated_error(repo_id: str, endpoint: str, token_given: bool) -> GatedRepoError:
    url = f"{endpoint}/{repo_id}"
    if token_given:
        return GatedRepoError(
            f"{repo_id} is gated and this token has no access to it yet",
            hint=f"accept its license at {url} with the account the token belongs to, then retry",
        )
    return GatedRepoError(
        f"{repo_id} is gated: accept its license at {url}, then set HF_TOKEN (or pass --token) to a token of that account",
        hint="tokens: https://huggingface.co/settings/tokens",
    )


def not_found(repo_id: str, endpoint: str) -> HubError:
    return HubError(
        f"no model repo {repo_id!r} on {endpoint}",
        hint="check the name with `influence search`; a private repo needs HF_TOKEN or --token",
    )


def revision_not_found(repo_id: str, revision: str | None) -> HubError:
    return HubError(f"{repo_id} has no revision {revision!r}", hint="give a branch, a tag or a commit with --revision")


def http_error(
    response: httpx.Response, *, repo_id: str, revision: str | None, path: str | None, endpoint: str, token_given: bool
) -> HubError:
    """The :class:`HubError` for a failed resolve request (the Hub's ``X-Error-Code`` says which)."""
    code = response.headers.get("X-Error-Code", "")
    status = response.status_code
    if code == "GatedRepo":
        return gated_error(repo_id, endpoint, token_given)
    if code == "RevisionNotFound":
        return revision_not_found(repo_id, revision)
    if code == "EntryNotFound" or (status == 404 and path and code != "RepoNotFound"):
        return HubError(f"{repo_id} has no file {path!r} at revision {revision or 'main'}")
    if code == "RepoNotFound" or status == 404:
        return not_found(repo_id, endpoint)
    if status in (401, 403):
        what = "rejected the token" if token_given else "refused access"
        return HubError(f"{endpoint} {what} for {repo_id} (HTTP {status})", hint="check HF_TOKEN / --token")
    message = response.headers.get("X-Error-Message") or response.reason_phrase
    return HubError(f"{endpoint} answered HTTP {status} ({message}) for {repo_id}" + (f"/{path}" if path else ""))


@contextmanager
def hub_errors(
    endpoint: str, repo_id: str | None = None, revision: str | None = None, token_given: bool = False
) -> Iterator[None]:
    """Turn huggingface_hub's and httpx's exceptions into :class:`HubError` s with a message a user can act on."""
    from huggingface_hub import errors as hf

    entry_not_found = tuple(
        cls for cls in (getattr(hf, "RemoteEntryNotFoundError", None), getattr(hf, "EntryNotFoundError", None)) if cls
    )
    repo = repo_id or "?"
    try:
        yield
    except InfluenceError:
        raise
    except hf.OfflineModeIsEnabled:
        raise HubUnreachableError(
            "offline mode is on (HF_HUB_OFFLINE is set), so the Hub is not contacted",
            hint="unset HF_HUB_OFFLINE to search and download",
        ) from None
    except hf.GatedRepoError:
        raise gated_error(repo, endpoint, token_given) from None
    except hf.RevisionNotFoundError:
        raise revision_not_found(repo, revision) from None
    except entry_not_found as exc:
        raise HubError(f"{repo}: {str(exc).splitlines()[0]}") from None
    except hf.RepositoryNotFoundError:
        raise not_found(repo, endpoint) from None
    except hf.HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        raise HubError(f"{endpoint} answered HTTP {status} for {repo}: {str(exc).strip().splitlines()[0]}") from None
    except Exception as exc:
        if _network_error(exc):
            raise unreachable(endpoint, exc) from None
        raise
