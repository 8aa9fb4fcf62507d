"""MediaWiki source: the pages of some namespaces of one wiki, read through the Action API.

Keys are page ids, so a move keeps its key and is a rename; a revision is a revision id, and a document's
bytes are that revision's wikitext, parsed as plain text (markup and templates are not expanded).

The cursor (``Mark``) is the (timestamp, rcid) of the last recent-changes row read. The next run asks
from that second on and skips rows up to that rcid, so rows of the same second are neither lost nor read
twice.
Recent changes and the log only say which pages were touched; what changed comes from each touched
page's state now, compared with the catalog. A page created and deleted between two runs is therefore
nothing, a page deleted and restored is unchanged, and rereading rows after a failed run is harmless.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

import requests

from tasks.sources.base import (
    Change,
    ChangeKind,
    ChangeSet,
    Cursor,
    DocumentFetchError,
    KnownDocument,
    Source,
    SourceError,
    StaleRevisionError,
    secret,
    sort_changes,
)

if TYPE_CHECKING:
    from tasks.settings import MediaWikiSourceConfig, Settings

_TIMESTAMP = "%Y-%m-%dT%H:%M:%SZ"
_BATCH = 50  # ids per request: the API's limit without the apihighlimits right
_RETRIED_CODES = {"maxlag", "ratelimited"}
# Log types that move, remove, restore or rewrite a page's revisions.
_PAGE_LOG_TYPES = {"move", "delete", "import", "merge"}
# Logged-in sessions, reused by every fetch of a run instead of logging in again per document.
_SESSIONS: dict[tuple[str, str, str], requests.Session] = {}


class WikiError(RuntimeError):
    """A request to the wiki failed: refused, unreachable, or still failing after the retries."""


class WikiLoginError(WikiError):
    pass


@dataclass
class WikiClient:
    """Action API calls with maxlag, retry with backoff, ``continue`` paging and bot-password login."""

    api_url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    maxlag: int = 5
    retries: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    timeout_s: float = 30.0
    http: requests.Session = field(default_factory=requests.Session, repr=False)
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    logged_in: bool = False

    def login(self) -> None:
        """Log in with the bot password (``User@app``); the password only ever travels in a POST body."""
        tokens = self.call({"action": "query", "meta": "tokens", "type": "login"})
        token = tokens["query"]["tokens"]["logintoken"]
        params = {"action": "login", "lgname": self.username, "lgpassword": self.password, "lgtoken": token}
        result = self.call(params, post=True)["login"]
        if result.get("result") != "Success":
            reason = result.get("reason") or result.get("result")
            raise WikiLoginError(f"login as {self.username!r} failed: {reason}")
        self.logged_in = True

    def call(self, params: Mapping[str, Any], *, post: bool = False) -> dict:
        """One API request; lag, rate limits, 5xx and connection failures are retried with backoff."""
        failure, wait = "", None
        for attempt in range(self.retries + 1):
            if attempt:
                delay = wait if wait is not None else self.backoff_s * 2 ** (attempt - 1)
                self.sleep(min(self.max_backoff_s, delay))
            full = {**params, "format": "json", "formatversion": "2", "maxlag": str(self.maxlag)}
            if self.logged_in:
                full["assert"] = "user"  # an expired session fails loudly instead of reading anonymously
            try:
                response = self._send(full, post)
            except requests.RequestException as exc:
                failure, wait = self._scrub(f"{type(exc).__name__}: {exc}"), None
                continue
            wait = _retry_after(response)
            if response.status_code == 429 or response.status_code >= 500:
                failure = f"HTTP {response.status_code}"
                continue
            body = self._json(response)
            error = body.get("error")
            if error is None:
                return body
            code, info = error.get("code", "?"), self._scrub(error.get("info", ""))
            if code == "assertuserfailed" and self.username:
                self.logged_in = False
                self.login()
                failure = "the login session expired"
                continue
            if code not in _RETRIED_CODES:
                raise WikiError(f"{params.get('action')} failed: {code}: {info}")
            failure = f"{code}: {info}"
        raise WikiError(f"{failure} (gave up after {self.retries + 1} attempts)")

    def query(self, params: Mapping[str, Any]) -> Iterator[dict]:
        """Every page of an ``action=query`` answer, following ``continue``."""
        cont: dict[str, Any] = {"continue": ""}
        while True:
            body = self.call({**params, "action": "query", **cont})
            yield body.get("query", {})
            if "continue" not in body:
                return
            cont = body["continue"]

    def _send(self, params: dict, post: bool) -> requests.Response:
        if post:
            return self.http.post(self.api_url, data=params, timeout=self.timeout_s)
        return self.http.get(self.api_url, params=params, timeout=self.timeout_s)

    def _json(self, response: requests.Response) -> dict:
        if response.status_code >= 400:
            raise WikiError(f"HTTP {response.status_code} from {self.api_url}")
        try:
            body = response.json()
        except ValueError:
            raise WikiError(f"{self.api_url} did not answer with JSON: is it the wiki's api.php?") from None
        if not isinstance(body, dict):
            raise WikiError(f"{self.api_url} answered with something other than an API result")
        return body

    def _scrub(self, text: str) -> str:
        return text.replace(self.password, "***") if self.password else text


def _retry_after(response: requests.Response) -> float | None:
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True, order=True)
class Mark(Cursor):
    """The cursor: a position in recent changes, the row (timestamp, rcid) last read."""

    timestamp: str
    rcid: int

    def __post_init__(self) -> None:
        datetime.strptime(self.timestamp, _TIMESTAMP)  # raises ValueError when malformed
        if not isinstance(self.rcid, int):
            raise ValueError(f"rcid must be an integer, not {self.rcid!r}")

    def before(self, row: Mapping[str, Any]) -> bool:
        return (self.timestamp, self.rcid) < (row["timestamp"], row["rcid"])


@dataclass(frozen=True)
class PageState:
    page_id: int
    title: str
    ns: int
    revid: int
    redirect: bool


@dataclass
class MediaWikiSource(Source):
    """Pages of ``namespaces`` of the wiki whose api.php is at ``api_url`` (redirects are not documents)."""

    name: str
    api_url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    namespaces: tuple[int, ...] = (0,)
    maxlag: int = 5
    retries: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    timeout_s: float = 30.0
    rc_max_age_days: float = 90.0
    page_size: int | str = "max"  # rows per request; the API's maximum unless a test wants many pages
    kind: ClassVar[str] = "mediawiki"
    cursor_type: ClassVar[type[Cursor] | None] = Mark

    @classmethod
    def from_config(cls, cfg: MediaWikiSourceConfig, settings: Settings) -> MediaWikiSource:
        return cls(
            cfg.name,
            cfg.api_url,
            username=cfg.username,
            password=secret(cfg.kind, cfg.name, cfg.password_env),
            namespaces=tuple(cfg.namespaces),
            maxlag=cfg.maxlag,
            retries=cfg.retries,
            backoff_s=cfg.backoff_s,
            max_backoff_s=cfg.max_backoff_s,
            rc_max_age_days=cfg.rc_max_age_days,
        )

    def document_filename(self, change: Change) -> str:
        """Wikitext is parsed as plain text, whatever the title looks like."""
        return f"{change.title or change.key}.txt"

    def changes(self, cursor: Mark | None, known: Mapping[str, KnownDocument]) -> ChangeSet:
        warnings: list[str] = []
        try:
            api = self._api()
            mark = self._usable_mark(api, cursor, warnings)
            if mark is None:
                changes, mark = self._full(api, known)
            else:
                changes, mark = self._since(api, mark, known)
        except WikiError as exc:
            raise SourceError(self._message(str(exc))) from None
        return ChangeSet(sort_changes(changes), cursor=mark, warnings=warnings)

    def fetch(self, change: Change) -> bytes:
        page = f"page {change.title!r}, " if change.title else ""
        params = {"action": "query", "prop": "revisions", "revids": change.revision, "rvprop": "ids|content"}
        try:
            body = self._api().call({**params, "rvslots": "main"})
        except WikiError as exc:
            raise DocumentFetchError(self.name, change.key, f"{page}{exc}") from None
        query = body.get("query", {})
        if query.get("badrevids") or not query.get("pages"):
            reason = f"{page}revision {change.revision} no longer exists"
            raise StaleRevisionError(self.name, change.key, reason)
        slot = query["pages"][0]["revisions"][0]["slots"]["main"]
        if slot.get("texthidden") or "content" not in slot:
            reason = f"{page}the text of revision {change.revision} is hidden"
            raise DocumentFetchError(self.name, change.key, reason)
        return slot["content"].encode("utf-8")

    # -- change detection ----------------------------------------------------------------------------

    def _usable_mark(self, api: WikiClient, mark: Mark | None, warnings: list[str]) -> Mark | None:
        """The stored mark, or None when the whole wiki must be listed (first run, too old a mark)."""
        if mark is None:
            return None
        now = datetime.strptime(
            api.call({"action": "query", "curtimestamp": "1"})["curtimestamp"], _TIMESTAMP
        )
        age_days = (now - datetime.strptime(mark.timestamp, _TIMESTAMP)).total_seconds() / 86400
        if age_days > self.rc_max_age_days - 1:
            warnings.append(
                f"mediawiki source {self.name!r}: the last run was {age_days:.0f} days ago, past what recent "
                "changes keep; listed every page and compared it with the catalog"
            )
            return None
        return mark

    def _full(self, api: WikiClient, known: Mapping[str, KnownDocument]) -> tuple[list[Change], Mark]:
        """Every page compared with the catalog. The catalog holds no titles, so a page moved since it
        was recorded shows up here as modified (with its new title), not renamed."""
        # The mark is taken first: whatever changes while the pages are listed is read again next run.
        mark = self._latest_mark(api)
        pages: dict[str, PageState] = {}
        for ns in self.namespaces:
            params = {"generator": "allpages", "gapnamespace": ns, "gapfilterredir": "nonredirects"}
            for chunk in api.query({**params, "gaplimit": self.page_size, "prop": "info"}):
                pages.update((str(p["pageid"]), _page_state(p)) for p in chunk.get("pages", ()))
        changes = [c for key, page in pages.items() if (c := self._change(key, page, known, moved=False))]
        changes += [Change(ChangeKind.DELETED, key, None) for key in known if key not in pages]
        return changes, mark

    def _since(
        self, api: WikiClient, mark: Mark, known: Mapping[str, KnownDocument]
    ) -> tuple[list[Change], Mark]:
        params = {"list": "recentchanges", "rcstart": mark.timestamp, "rcdir": "newer"}
        params |= {
            "rclimit": self.page_size,
            "rcprop": "ids|title|timestamp|loginfo",
            "rctype": "edit|new|log",
        }
        rows = [r for chunk in api.query(params) for r in chunk.get("recentchanges", ()) if mark.before(r)]
        params = {"list": "logevents", "lestart": mark.timestamp, "ledir": "newer", "lelimit": self.page_size}
        params["leprop"] = "ids|title|type|timestamp|details"
        events = [e for chunk in api.query(params) for e in chunk.get("logevents", ())]
        last = max(rows, key=lambda r: (r["timestamp"], r["rcid"]), default=None)
        touched, moved = self._touched(api, mark, rows, events, known)
        states = self._page_states(api, touched)
        changes: list[Change] = []
        for page_id in sorted(touched):
            key, page = str(page_id), states.get(page_id)
            if page is None or page.ns not in self.namespaces or page.redirect:
                if key in known:
                    changes.append(Change(ChangeKind.DELETED, key, None))
            elif change := self._change(key, page, known, moved=page_id in moved):
                changes.append(change)
        return changes, Mark(last["timestamp"], last["rcid"]) if last else mark

    def _touched(
        self,
        api: WikiClient,
        mark: Mark,
        rows: list[dict],
        events: list[dict],
        known: Mapping[str, KnownDocument],
    ) -> tuple[set[int], set[int]]:
        """Ids of the pages the rows and log events touch, and of those among them that were moved."""
        # An edit in another namespace cannot matter; a log row can (a move into a watched namespace).
        rows = [
            r for r in rows if r["type"] == "log" or r["ns"] in self.namespaces or str(r["pageid"]) in known
        ]
        events = [e for e in events if e.get("type") in _PAGE_LOG_TYPES]
        touched = {r["pageid"] for r in rows if r.get("pageid")} | {
            e["logpage"] for e in events if e.get("logpage")
        }
        untitled = [r["title"] for r in rows if not r.get("pageid")]
        touched |= self._page_ids(api, untitled + [e["title"] for e in events if not e.get("logpage")])
        moved = {r["pageid"] for r in rows if r.get("logtype") == "move"}
        # Log events are asked for from the cursor's second on: those of that very second were seen.
        moved |= {e["logpage"] for e in events if e["type"] == "move" and e["timestamp"] > mark.timestamp}
        return touched, moved

    @staticmethod
    def _change(key: str, page: PageState, known: Mapping[str, KnownDocument], moved: bool) -> Change | None:
        revision, doc = str(page.revid), known.get(key)
        if doc is None:
            return Change(ChangeKind.ADDED, key, revision, title=page.title)
        if doc.revision == revision:
            return None
        if moved:
            return Change(ChangeKind.RENAMED, key, revision, old_key=key, title=page.title)
        return Change(ChangeKind.MODIFIED, key, revision, title=page.title)

    def _latest_mark(self, api: WikiClient) -> Mark:
        params = {"list": "recentchanges", "rcdir": "older", "rclimit": "1", "rcprop": "ids|timestamp"}
        body = api.call({"action": "query", "curtimestamp": "1", **params})
        rows = body.get("query", {}).get("recentchanges", [])
        return Mark(rows[0]["timestamp"], rows[0]["rcid"]) if rows else Mark(body["curtimestamp"], 0)

    def _page_states(self, api: WikiClient, page_ids: Iterable[int]) -> dict[int, PageState]:
        """The state now of each page that still exists (missing pages are absent from the answer)."""
        ids = sorted(page_ids)
        states: dict[int, PageState] = {}
        for i in range(0, len(ids), _BATCH):
            batch = "|".join(str(p) for p in ids[i : i + _BATCH])
            for chunk in api.query({"prop": "info", "pageids": batch}):
                states.update(
                    (p["pageid"], _page_state(p)) for p in chunk.get("pages", ()) if not p.get("missing")
                )
        return states

    def _page_ids(self, api: WikiClient, titles: list[str]) -> set[int]:
        ids: set[int] = set()
        unique = sorted(set(titles))
        for i in range(0, len(unique), _BATCH):
            for chunk in api.query({"titles": "|".join(unique[i : i + _BATCH])}):
                ids |= {p["pageid"] for p in chunk.get("pages", ()) if p.get("pageid")}
        return ids

    # -- plumbing ------------------------------------------------------------------------------------

    def _api(self) -> WikiClient:
        client = WikiClient(
            self.api_url,
            self.username,
            self.password,
            maxlag=self.maxlag,
            retries=self.retries,
            backoff_s=self.backoff_s,
            max_backoff_s=self.max_backoff_s,
            timeout_s=self.timeout_s,
        )
        if not self.username:
            return client
        secret = hashlib.sha256((self.password or "").encode()).hexdigest()
        key = (self.api_url, self.username, secret)
        if key in _SESSIONS:
            client.http, client.logged_in = _SESSIONS[key], True
        else:
            client.login()
            _SESSIONS[key] = client.http
        return client

    def _message(self, reason: str) -> str:
        return f"mediawiki source {self.name!r} ({self.api_url}): {reason}"


def _page_state(page: Mapping[str, Any]) -> PageState:
    return PageState(page["pageid"], page["title"], page["ns"], page["lastrevid"], bool(page.get("redirect")))
