"""The relay: wires source → codec → handlers → Klaviyo → offsets, and owns the lifecycle.

Threads: the event loop (everything below), the Kafka source thread (the consumer), the
dead-letter producer's poll thread. Tasks: one per busy key lane, one per sealed bulk job, one
per dead-letter write, the commit loop, the reachability probe.

Where an event's offset becomes committable: :mod:`consumer.pipeline.inflight`. Records in,
rebalances and commits: :mod:`~consumer.pipeline.listener`. One event's stages:
:mod:`~consumer.pipeline.stages`. How its requests reach Klaviyo: the send mode's
:mod:`~consumer.pipeline.delivery`. Here: start-up, the halt (a fatal Klaviyo answer stops
dispatching and committing), and the stop: SIGTERM/SIGINT drains everything (bounded by the
drain timeout), commits, leaves the group and flushes the dead-letter writes.

Klaviyo accounts: one stack (client, halt, reachability, delivery) per account; with several
(``KLAVIYO_ACCOUNTS``) an :class:`~consumer.accounts.router.AccountRouter` routes each event to
its account's and a refused key halts that account alone (see :mod:`consumer.accounts`).

The I/O (source, Klaviyo, dead-letter writer) is given as factories with the production ones
as defaults (:mod:`consumer.pipeline.ports`), so all of this runs in-process against fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from consumer.accounts.config import DEFAULT_ACCOUNT, accounts_from
from consumer.accounts.router import AccountRouter, AccountStack, probe_all
from consumer.accounts.window import account_book
from consumer.codec import Decoder
from consumer.handlers.registry import HandlerRegistry
from consumer.klaviyo.oauth import OAUTH_REFUSALS
from consumer.klaviyo.outcomes import Fatal
from consumer.klaviyo.requests import KlaviyoRequest
from consumer.klaviyo.retry import RetryPolicy
from consumer.observability.health import RelayState, start_http_server
from consumer.observability.logging import get_logger
from consumer.observability.metrics import QUOTA_SHARE
from consumer.observability.revision import track_revision
from consumer.pipeline.backlog import Backlog
from consumer.pipeline.catchup import CatchUp
from consumer.pipeline.deadletter_topic import DeadLetterTopicUnusable
from consumer.pipeline.delivery import Delivery, delivery_for
from consumer.pipeline.dispatch import Dispatcher
from consumer.pipeline.failure import class_name
from consumer.pipeline.inflight import InFlight, Work
from consumer.pipeline.listener import Listener
from consumer.pipeline.ports import (
    DeadLetterWriter,
    Klaviyo,
    OpenDeadLetters,
    OpenKlaviyo,
    OpenSource,
    Source,
    dead_letter_producer,
    kafka_source,
    klaviyo_client,
)
from consumer.pipeline.reachability import Reachability
from consumer.pipeline.sending import Halt, Sender
from consumer.pipeline.source import FINAL_COMMIT_SECONDS
from consumer.pipeline.stages import DeadLettering, Stages
from consumer.priorities import Priorities
from consumer.settings import Settings

log = get_logger(__name__)

DLQ_FLUSH_SECONDS = 5.0  # part of the shutdown budget, like the source's (see source.py)
EXIT_OK = 0
EXIT_FAILED = 1


class Relay:
    def __init__(
        self,
        settings: Settings,
        *,
        registry: HandlerRegistry | None = None,
        decoder: Decoder | None = None,
        source: OpenSource = kafka_source,
        klaviyo: Klaviyo | None = None,
        dead_letters: OpenDeadLetters = dead_letter_producer,
        catch_up: CatchUp | None = None,
        open_klaviyo: OpenKlaviyo = klaviyo_client,
    ) -> None:
        """``klaviyo``: the client of the one account (tests); else ``open_klaviyo`` makes one
        per account (:mod:`consumer.accounts`)."""
        self._settings = settings
        self._registry = registry or HandlerRegistry.from_settings(settings)
        self._open_source = source
        self._source: Source | None = None  # opened by run(), on the loop
        self._accounts = accounts_from(settings)
        self._open_dead_letters = dead_letters
        self._catch_up = catch_up  # run --until-caught-up: stop once the start's backlog is in
        self.state = RelayState()
        self._book = (
            account_book(settings, self._accounts)
            if self._accounts.named
            else InFlight(settings.pending_bound)
        )
        self._halt = Halt(self._on_halt)
        self._tasks: set[asyncio.Task[None]] = set()
        self._exit_code = EXIT_OK
        self._stop = asyncio.Event()
        self._dead_letters = DeadLettering(self._book, self._spawn)
        policy = RetryPolicy.from_settings(settings)
        self._stacks: dict[str, AccountStack] = {}
        for name, account in self._accounts.settings.items():
            client = klaviyo if klaviyo is not None else open_klaviyo(account, name)
            self._stacks[name] = self._stack(name, account, client, policy)
        self._delivery: Delivery = (
            AccountRouter(self._accounts, self._stacks, self._dead_letters)
            if self._accounts.named
            else self._stacks[DEFAULT_ACCOUNT].delivery
        )
        stages = Stages(
            self._registry,
            decoder or Decoder.from_settings(settings),
            policy=policy,
            halt=self._halt,
            book=self._book,
            delivery=self._delivery,
            reject=self._dead_letters,
            priorities=Priorities(settings.topic_priorities),
        )
        self._dispatcher: Dispatcher[Work] = Dispatcher(stages.process, self._on_crash)
        self._listener = Listener(
            settings,
            self.state,
            book=self._book,
            dispatcher=self._dispatcher,
            delivery=self._delivery,
            halt=self._halt,
            on_fatal=self._on_kafka_failed,
            on_share=self._set_share,
        )
        # Before the first assignment a group-derived share is 0: no partitions yet.
        for name, account in self._accounts.settings.items():
            QUOTA_SHARE.labels(name).set(account.rate_limit_share or 0.0)

    def _stack(
        self, name: str, account: Settings, client: Klaviyo, policy: RetryPolicy
    ) -> AccountStack:
        """One account's client, halt, reachability and delivery. Alone, it is the relay's: its
        halt holds everything. One of several, it halts alone and parks its events."""
        if self._accounts.named:
            halt = Halt(functools.partial(self._on_account_halt, name), park=True)
            reachability = Reachability(
                client, self.state, halt, account=name, on_change=self._reachability_changed
            )
        else:
            halt = self._halt
            reachability = Reachability(client, self.state, halt)
        sender = Sender(
            client.send, policy, halt, on_reachable=reachability.set, backoff=client.backoff
        )
        delivery = delivery_for(
            account,
            sender,
            self._book,
            reject=self._dead_letters,
            spawn=self._spawn,
            saturated=lambda: self._source is not None and self._source.saturated,
            backlog=lambda: Backlog(0) if self._source is None else self._source.backlog,
            room=client.try_acquire,
            give_back=client.release,
        )
        return AccountStack(name, client, halt, reachability, delivery)

    # --- lifecycle -------------------------------------------------------------------------

    async def run(self) -> int:
        """Relay until SIGTERM/SIGINT (exit 0) or a fatal Kafka error or bug (exit 1); with a
        catch-up, until the backlog seen at start is committed (exit 0) or cannot be (exit 1)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        halted = {name: _halted(stack.halt) for name, stack in self._stacks.items()}
        http = await start_http_server(
            self._settings.metrics_port,
            self.state,
            halted=halted if self._accounts.named else None,
        )
        try:
            async with contextlib.AsyncExitStack() as clients:
                for stack in self._stacks.values():
                    await clients.enter_async_context(stack.klaviyo)
                catch_up = self._catch_up
                if catch_up is not None and not await catch_up.begin(self._registry.topics()):
                    return EXIT_FAILED
                try:
                    dead_letters = await self._open_dead_letters(self._settings, loop)
                except DeadLetterTopicUnusable as exc:
                    log.error("relay not started: dead-letter topic unusable", error=str(exc))
                    return EXIT_FAILED
                self._dead_letters.open(dead_letters)
                topics = self._registry.topics()
                # Logged before the first probe, so a refused key reads "started" then "halted".
                log.info(
                    "relay started",
                    topics=len(topics),
                    group=self._settings.kafka_group_id,
                    mode=self._settings.send_mode.value,
                    metrics_port=_port_of(http),
                )
                track_revision(self._settings.klaviyo_revision)
                await probe_all(self._stacks)
                source = self._open_source(
                    self._settings,
                    topics,
                    self._listener,
                    loop,
                    on_client_error=self._listener.on_client_error,
                )
                self._source = source
                self._book.attach(source)
                if self._halt.halted:
                    source.hold(discard=False)
                source.start()
                background = [
                    asyncio.create_task(self._listener.commit_loop(source), name="commit"),
                ]
                background += [
                    asyncio.create_task(stack.reachability.watch(), name=f"probe-{name}")
                    for name, stack in self._stacks.items()
                ]
                if self._catch_up is not None:
                    watch = self._catch_up.watch(self.state, self.request_stop)
                    background.append(asyncio.create_task(watch, name="catch-up"))
                await self._stop.wait()
                await self._shutdown(source, dead_letters, background)
                if self._catch_up is not None and not await self._catch_up.finish():
                    self._exit_code = EXIT_FAILED
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await http.cleanup()
        log.info("relay stopped", exit_code=self._exit_code)
        return self._exit_code

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("stop requested", drain_timeout=self._settings.drain_timeout_seconds)
        self._stop.set()

    async def _shutdown(
        self, source: Source, dead_letters: DeadLetterWriter, background: list[asyncio.Task[None]]
    ) -> None:
        loop = asyncio.get_running_loop()
        self.state.stopping = True
        source.hold(discard=True)
        self._delivery.hurry()
        deadline = loop.time() + self._settings.drain_timeout_seconds
        drained = await self._book.wait_until(
            lambda: source.outstanding <= 0, deadline, lambda: self._halt.halted
        )
        if not drained:
            log.warning(
                "drain timeout: unfinished events are left for redelivery",
                unfinished=source.outstanding,
            )
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        final_commit = asyncio.ensure_future(self._listener.commit_now(source))
        await asyncio.wait([final_commit], timeout=FINAL_COMMIT_SECONDS)
        await source.close()
        await self._dispatcher.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        left = await dead_letters.close(DLQ_FLUSH_SECONDS)
        if left:
            log.warning("dead-letter writes unconfirmed at exit", count=left)

    def _on_crash(self, exc: BaseException) -> None:
        log.error("relay bug: stopping", error=class_name(exc), exc_info=exc)
        self._exit_code = EXIT_FAILED
        self.request_stop()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._on_crash(task.exception())  # type: ignore[arg-type]

    def _on_halt(self, outcome: Fatal, request: KlaviyoRequest) -> None:
        error = outcome.errors[0] if outcome.errors else None
        if error is not None and error.code in OAUTH_REFUSALS and error.detail:
            # The token endpoint refused the grant or the client: its own words say which.
            self.state.halt_reason = error.detail
            message = f"{error.detail}: relay halted, nothing more is sent or committed"
        else:
            message = (
                "klaviyo refused the API key: relay halted, nothing more is sent or committed "
                "until it is restarted with a valid key"
            )
        self.state.halted = True
        if self._source is not None:  # a halt at the first probe: run() holds it when made
            self._source.hold(discard=False)
        log.error(
            message,
            status=outcome.status,
            code=error.code if error is not None else None,
            endpoint=request.endpoint.value,
        )

    def _on_account_halt(self, name: str, outcome: Fatal, request: KlaviyoRequest) -> None:
        """One of several accounts was refused: it alone stops; its events are parked."""
        error = outcome.errors[0] if outcome.errors else None
        why = (
            error.detail
            if error is not None and error.code in OAUTH_REFUSALS and error.detail
            else "klaviyo refused the API key"
        )
        log.error(
            f"{why}: account halted, its events are dead-lettered account_halted until it is"
            " fixed (replay them with dlq replay --account); the other accounts go on",
            account=name,
            status=outcome.status,
            code=error.code if error is not None else None,
            endpoint=request.endpoint.value,
        )

    def _reachability_changed(self) -> None:
        """Of several accounts, Klaviyo is reachable when every running account reaches it."""
        running = [s for s in self._stacks.values() if not s.halt.halted]
        self.state.klaviyo_reachable = all(s.reachability.reachable for s in running)

    def _set_share(self, share: float) -> None:
        # The group's share applies to each account's own quota (each replica holds that share
        # of every account's partitions' events).
        following = [
            name
            for name in self._stacks
            # RATE_LIMIT_SHARE set explicitly: it wins over the group's
            if self._accounts.settings[name].rate_limit_share is None
        ]
        for name in following:
            self._stacks[name].klaviyo.set_share(share)
            QUOTA_SHARE.labels(name).set(share)
        if following:
            log.info("quota share", share=round(share, 4))

    def _on_kafka_failed(self, message: str) -> None:
        log.error("kafka failed: stopping", error=message)
        self._exit_code = EXIT_FAILED
        self.request_stop()


def _halted(halt: Halt) -> Callable[[], bool]:
    return lambda: halt.halted


def _port_of(runner: Any) -> int | None:
    addresses = runner.addresses
    return addresses[0][1] if addresses else None
