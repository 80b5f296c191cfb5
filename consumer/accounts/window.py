"""Each account's own in-flight window, so that an account whose events wait cannot fill the
relay's shared one.

``MAX_IN_FLIGHT`` bounds every event the relay holds. With several accounts, one whose events
*wait* (Klaviyo unreachable for it, a 429 storm, demand far over its quota) would fill that
window alone: the source then pauses, and every other account's email waits behind it. So each
account may hold at most ``ACCOUNT_MAX_IN_FLIGHT`` events in flight; at that mark the partitions
its events came from are paused (the source's ``crowd``, as for a crowded partition), and they
resume once the account is below ``RESUME_BELOW`` of its window. The other partitions keep
flowing, so an account on topics of its own is isolated; on a partition shared with other
accounts, a waiting account slows that partition (Kafka keeps a partition's order: its later
records cannot be read past the ones waiting without an overflow topic).

An account may go over its window by what one ``consume`` fetched before the pause took
effect. So with several accounts the source hands each fetch over in step (it fetches again only
once the loop took the last one, and so applies a pause first), a fetch takes at most one
account's window (:func:`fetch_batch`), and the default window is
``MAX_IN_FLIGHT ÷ (accounts + 1)``: one waiting account then holds at most twice its window less
one, and with two accounts the other still has its whole window free.

:class:`AccountBook` is the book of work in flight (:class:`~consumer.pipeline.inflight.InFlight`)
of a relay with several accounts: it counts each taken event against its account's window and
merges the partitions full accounts hold with those the book finds crowded, into the one set
the source keeps paused.
"""

from __future__ import annotations

from consumer.accounts.config import Accounts
from consumer.accounts.routing import route
from consumer.observability.logging import get_logger
from consumer.observability.metrics import ACCOUNT_EVENTS_IN_FLIGHT
from consumer.pipeline.inflight import Flow, InFlight, Work
from consumer.pipeline.offsets import TopicPartitionKey
from consumer.pipeline.records import SourceRecord
from consumer.settings import Settings

log = get_logger(__name__)

# The default window never goes below this: an account alone must still keep enough requests
# in flight to use its quota (Create Event's burst is 350/s at a few hundred ms a request: about
# a hundred concurrent requests), and a tiny split would pause its partitions on every burst.
MIN_ACCOUNT_WINDOW = 100


def account_window(settings: Settings, accounts: int) -> int:
    """ACCOUNT_MAX_IN_FLIGHT, or its default: MAX_IN_FLIGHT split into ``accounts + 1`` (the
    extra share is the room a fetch that overshoots needs, see the module), at least
    :data:`MIN_ACCOUNT_WINDOW`, never more than MAX_IN_FLIGHT; one account alone (nothing to
    isolate it from) keeps the whole shared window."""
    if settings.account_max_in_flight is not None:
        return min(settings.account_max_in_flight, settings.max_in_flight)
    split = settings.max_in_flight // (accounts + 1) if accounts > 1 else settings.max_in_flight
    return min(settings.max_in_flight, max(MIN_ACCOUNT_WINDOW, split))


def fetch_batch(settings: Settings, batch: int) -> int:
    """The most records one ``consume`` may take: ``batch``, and with several accounts at most
    one account's window (what it may overshoot by before its pause takes effect)."""
    if not settings.klaviyo_accounts:
        return batch
    return min(batch, account_window(settings, len(settings.klaviyo_accounts)))


class AccountWindows:
    """The arithmetic: events in flight per account and per partition, and which partitions
    full accounts hold paused. Pure; every method runs on the loop."""

    def __init__(self, window: int, resume_mark: int) -> None:
        self._window = window
        self._resume_mark = resume_mark
        self._counts: dict[str, dict[TopicPartitionKey, int]] = {}
        # Full accounts → the partitions they hold paused: those with their events when they
        # filled, and any that brought one more since (kept until the account resumes, so an
        # idle partition of its topic does not refill it one fetch at a time).
        self._held: dict[str, set[TopicPartitionKey]] = {}

    def in_flight(self, account: str) -> int:
        return sum(self._counts.get(account, {}).values())

    def add(self, account: str, key: TopicPartitionKey) -> bool:
        """One more event of ``account`` from ``key``; whether the paused set changed."""
        partitions = self._counts.setdefault(account, {})
        partitions[key] = partitions.get(key, 0) + 1
        held = self._held.get(account)
        if held is not None:
            changed = key not in held
            held.add(key)
            return changed
        if self.in_flight(account) >= self._window:
            self._held[account] = set(partitions)
            return True
        return False

    def remove(self, account: str, key: TopicPartitionKey) -> bool:
        """One event of ``account`` from ``key`` finished; whether the paused set changed."""
        partitions = self._counts.get(account, {})
        left = partitions.get(key, 0) - 1
        if left > 0:
            partitions[key] = left
        else:
            partitions.pop(key, None)
        if account in self._held and self.in_flight(account) < self._resume_mark:
            del self._held[account]
            return True
        return False

    def forget(self, keys: set[TopicPartitionKey]) -> bool:
        """These partitions went (revoked or lost): their events no longer count."""
        changed = False
        for account, partitions in self._counts.items():
            for key in keys & partitions.keys():
                del partitions[key]
            held = self._held.get(account)
            if held is not None and keys & held:
                held.difference_update(keys)
                changed = True
        for account in [a for a in self._held if self.in_flight(a) < self._resume_mark]:
            del self._held[account]
            changed = True
        return changed

    def paused(self) -> frozenset[TopicPartitionKey]:
        return frozenset().union(*self._held.values())

    def holding(self, account: str) -> bool:
        """Whether ``account`` is at its window (its partitions paused)."""
        return account in self._held


class AccountBook(InFlight):
    """The book of work in flight with a window per account (see the module)."""

    def __init__(self, bound: int | None, accounts: Accounts, windows: AccountWindows) -> None:
        super().__init__(bound)
        self._accounts = accounts
        self._windows = windows
        self._counted: dict[Work, str] = {}  # taken, unfinished work → the account it counts for
        self._source: Flow | None = None
        self._book_crowded: frozenset[TopicPartitionKey] = frozenset()

    def attach(self, flow: Flow) -> None:
        self._source = flow
        super().attach(_Merged(self, flow))

    def take(self, records: list[SourceRecord]) -> list[Work]:
        taken = super().take(records)
        changed = False
        for work in taken:
            record = work.record
            name = route(self._accounts, record.topic, record.headers)
            if name is None or name not in self._accounts.settings:
                continue  # dead-lettered unknown_account at once: no account waits for it
            self._counted[work] = name
            was_holding = self._windows.holding(name)
            changed = self._windows.add(name, (record.topic, record.partition)) or changed
            if not was_holding and self._windows.holding(name):
                # The source's own line says "too many events wait": this names the cause.
                log.info("account at its in-flight window: its partitions paused", account=name)
            ACCOUNT_EVENTS_IN_FLIGHT.labels(name).set(self._windows.in_flight(name))
        if changed:
            self.crowd_merged()
        return taken

    def finish(self, work: Work) -> None:
        name = self._counted.pop(work, None)
        super().finish(work)
        if name is not None:
            record = work.record
            changed = self._windows.remove(name, (record.topic, record.partition))
            ACCOUNT_EVENTS_IN_FLIGHT.labels(name).set(self._windows.in_flight(name))
            if changed:
                self.crowd_merged()
                if not self._windows.holding(name):
                    log.info("account below its in-flight window: partitions resumed", account=name)

    def detach(self, partitions: list[TopicPartitionKey]) -> None:
        super().detach(partitions)
        gone = set(partitions)
        for work in [w for w in self._counted if (w.record.topic, w.record.partition) in gone]:
            del self._counted[work]
        if self._windows.forget(gone):
            self.crowd_merged()
        for name in self._accounts.settings:
            ACCOUNT_EVENTS_IN_FLIGHT.labels(name).set(self._windows.in_flight(name))

    def book_crowded(self, partitions: frozenset[TopicPartitionKey]) -> None:
        """The book's own crowded partitions (see ``InFlight``), kept to merge with ours."""
        self._book_crowded = partitions
        self.crowd_merged()

    def crowd_merged(self) -> None:
        if self._source is not None:
            self._source.crowd(self._book_crowded | self._windows.paused())


class _Merged:
    """The flow the base book talks to: releases go to the source as they are, its crowded
    partitions are merged with those full accounts hold."""

    def __init__(self, book: AccountBook, source: Flow) -> None:
        self._book = book
        self._source = source

    def release(self, count: int) -> None:
        self._source.release(count)

    def crowd(self, partitions: frozenset[TopicPartitionKey]) -> None:
        self._book.book_crowded(partitions)


def account_book(settings: Settings, accounts: Accounts) -> AccountBook:
    """The book of a relay serving ``accounts`` (KLAVIYO_ACCOUNTS), with their windows."""
    window = account_window(settings, len(accounts.settings))
    resume_mark = max(1, int(window * settings.resume_below))
    return AccountBook(settings.pending_bound, accounts, AccountWindows(window, resume_mark))
