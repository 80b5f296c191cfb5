"""``dlq inspect`` and ``dlq replay``: see why records were dead-lettered, and send them again.

``inspect`` prints one line per dead letter (to stdout; the totals go to stderr so the lines
can be piped). ``replay`` republishes the selected ones to their source topic with their
original key, value and headers, and records what it sent in the replay group
(``<KAFKA_GROUP_ID>.dlq-replay``) so a second run does not send them again.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import click
import orjson
from confluent_kafka import KafkaException

from consumer.accounts.config import accounts_from
from consumer.cli import settings_from
from consumer.cli.kafka import require_topics
from consumer.codec import Decoder
from consumer.errors import UNFIXABLE_BY_REPLAY, DecodeError, Reason
from consumer.plain_json import to_plain_json
from consumer.settings import Settings, SettingsError
from consumer.tools.deadletters import ParkedRecord, Selection, count_by, newest, parse_since
from consumer.tools.dlq_kafka import DeadLetterTopic, DeadLetterTopicError, publish
from consumer.tools.masking import mask_event
from consumer.tools.progress import PartitionProgress, ProgressTooScattered
from consumer.tools.render import Original, inspect_json, inspect_line
from consumer.tools.replay import plan_replays, progress_after

# Every reason code the relay writes, in the order the help lists them.
KNOWN_REASONS = tuple(Reason)


def _known_reason(
    _ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    unknown = [reason for reason in value if reason not in KNOWN_REASONS]
    if unknown:
        raise click.BadParameter(
            f"unknown reason {', '.join(unknown)}; valid reasons: {', '.join(KNOWN_REASONS)}"
        )
    return value


_selection_options = [
    click.option(
        "--reason",
        "reasons",
        multiple=True,
        callback=_known_reason,
        help=f"Only this reason code ({', '.join(KNOWN_REASONS)}); repeatable.",
    ),
    click.option(
        "--topic", "topics", multiple=True, help="Only records from this source topic; repeatable."
    ),
    click.option(
        "--account",
        "accounts",
        multiple=True,
        help="Only records routed to this Klaviyo account (by their original account header"
        " and topic, as the relay routes them; KLAVIYO_ACCOUNTS); repeatable.",
    ),
    click.option(
        "--since",
        default=None,
        help="Only records that failed since TIME: RFC 3339 (2024-05-01T12:00:00Z) or a"
        " duration back from now (90m, 2h, 1d).",
    ),
]


def _with_selection(command: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(_selection_options):
        command = option(command)
    return command


def _selection(
    settings: Settings,
    *,
    reasons: tuple[str, ...],
    topics: tuple[str, ...],
    since: str | None,
    accounts: tuple[str, ...],
) -> Selection:
    try:
        moment = parse_since(since, datetime.now(UTC)) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    if not accounts:
        return Selection(frozenset(reasons), frozenset(topics), moment)
    try:
        routing = accounts_from(settings)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    unknown = sorted(set(accounts) - set(routing.names))
    if unknown:
        raise click.BadParameter(
            f"unknown account {', '.join(unknown)}; accounts: {', '.join(routing.names)}",
            param_hint="--account",
        )
    return Selection(frozenset(reasons), frozenset(topics), moment, frozenset(accounts), routing)


def _open(settings: Settings) -> DeadLetterTopic:
    # Within seconds, naming the address, rather than after the reader's own timeouts.
    require_topics(settings.kafka_client_config(), [settings.dlq_topic])
    try:
        return DeadLetterTopic(settings)
    except (DeadLetterTopicError, KafkaException) as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def dlq() -> None:
    """Inspect and replay the dead-letter topic (DLQ_TOPIC)."""


@dlq.command(short_help="One line per dead letter: where from, why, the event (masked).")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Show only the N most recently failed records.",
)
@_with_selection
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record.")
@click.pass_context
def inspect(
    ctx: click.Context,
    *,
    limit: int | None,
    reasons: tuple[str, ...],
    topics: tuple[str, ...],
    since: str | None,
    accounts: tuple[str, ...],
    as_json: bool,
) -> None:
    """One line per dead letter: source topic/partition/offset, stage, reason, Klaviyo
    status/code, age (since the source record was written to Kafka, its record time), the
    event (personal data masked) and the error."""
    settings = settings_from(ctx)
    selection = _selection(settings, reasons=reasons, topics=topics, since=since, accounts=accounts)
    with _open(settings) as topic:
        try:
            progress = topic.progress()
            letters = [dl for dl in topic.read() if selection.matches(dl)]
        except (DeadLetterTopicError, KafkaException) as exc:
            raise click.ClickException(str(exc)) from None
    shown = newest(letters, limit)
    decoder = Decoder.from_settings(settings)
    now = datetime.now(UTC)
    for letter in shown:
        original = _original(decoder, letter)
        replayed = _replayed(progress, letter)
        if as_json:
            click.echo(orjson.dumps(inspect_json(letter, original, now, replayed=replayed)))
        else:
            click.echo(inspect_line(letter, original, now, replayed=replayed))
    reasons_text = ", ".join(f"{r} {n}" for r, n in count_by(letters).items()) or "none"
    pending = sum(not _replayed(progress, dl) for dl in letters)
    click.echo(
        f"{len(letters)} dead letter(s) on {topic.topic}"
        f"{f' (showing the newest {len(shown)})' if len(shown) < len(letters) else ''};"
        f" by reason: {reasons_text}; not replayed yet: {pending}",
        err=True,
    )


def _replayed(progress: dict[int, PartitionProgress], letter: ParkedRecord) -> bool:
    done = progress.get(letter.partition)
    return done is not None and done.replayed(letter.offset)


def _original(decoder: Decoder, letter: ParkedRecord) -> Original:
    if letter.value_truncated:
        return Original(undecodable=f"value {letter.value_truncated}: over the size limit")
    if letter.value is None:
        return Original(undecodable="no value")
    try:
        decoded = decoder.decode(letter.value)
    except DecodeError as exc:
        return Original(undecodable=exc.reason)
    return Original(decoded.record_name, mask_event(to_plain_json(decoded.datum)))


@dlq.command(short_help="Send selected dead letters again to their source topic.")
@_with_selection
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; publish nothing.")
@click.option(
    "--include-unfixable",
    is_flag=True,
    help="Also replay reasons a replay cannot fix (undecodable bytes, expired links, ...),"
    " which are skipped unless named with --reason.",
)
@click.pass_context
def replay(
    ctx: click.Context,
    *,
    reasons: tuple[str, ...],
    topics: tuple[str, ...],
    since: str | None,
    accounts: tuple[str, ...],
    dry_run: bool,
    include_unfixable: bool,
) -> None:
    """Republish selected dead letters to their source topic (original key, value, headers),
    with Klaviyo's backfill flag for events older than REPLAY_BACKFILL_AFTER_SECONDS.

    Undecodable records (bad_magic, truncated, invalid_body) and expired links (expired) would
    only fail again: they are skipped unless named with --reason or --include-unfixable is
    given."""
    settings = settings_from(ctx)
    selection = _selection(settings, reasons=reasons, topics=topics, since=since, accounts=accounts)
    backfill_after = timedelta(seconds=settings.replay_backfill_after_seconds)
    with _open(settings) as topic:
        try:
            progress = topic.progress()
            letters = topic.read({p: done.position for p, done in progress.items()})
            sources = sorted({dl.source_topic for dl in letters if dl.source_topic})
            plan = plan_replays(
                letters,
                progress,
                selection,
                now=datetime.now(UTC),
                backfill_after=backfill_after,
                partitions=topic.topic_partitions(sources),
            )
            skip = frozenset() if include_unfixable or reasons else UNFIXABLE_BY_REPLAY
            skipped = [item for item in plan.replays if item.letter.reason in skip]
            replays = [item for item in plan.replays if item.letter.reason not in skip]
            low = {p: w.low for p, w in topic.watermarks.items()}
            # Refuse before publishing if the progress could not be recorded afterwards.
            for done in progress_after(progress, replays, low).values():
                done.metadata()
        except (DeadLetterTopicError, KafkaException, ProgressTooScattered) as exc:
            raise click.ClickException(str(exc)) from None

        verb = "would replay" if dry_run else "replaying"
        if skipped:
            by_reason = count_by(item.letter for item in skipped)
            click.echo(
                f"skipping {len(skipped)} that a replay cannot fix"
                f" ({', '.join(f'{r} {n}' for r, n in by_reason.items())});"
                " --include-unfixable (or --reason) sends them anyway"
            )
        for item in replays:
            where = f"{item.topic}/{'by key' if item.partition is None else item.partition}"
            flag = " (backfill)" if item.backfill else ""
            click.echo(f"{verb} {item.letter.source} reason={item.letter.reason} → {where}{flag}")
        for letter, why in plan.unreplayable:
            click.echo(f"cannot replay dead letter {letter.partition}/{letter.offset}: {why}")
        # Records below the committed position were not even read: all replayed before.
        before = plan.already_replayed + sum(
            done.position - low[p] for p, done in progress.items() if p in low
        )
        counts = (
            f"{before} replayed before, {plan.not_selected} not selected,"
            f" {len(skipped)} skipped as unfixable, {len(plan.unreplayable)} not replayable"
        )
        if dry_run:
            click.echo(f"dry run: {len(replays)} would be replayed ({counts}); nothing sent")
            return
        try:
            results = publish(settings, replays) if replays else []
            sent = [item for item, error in results if error is None]
            topic.commit(progress_after(progress, sent, low))
        except (DeadLetterTopicError, KafkaException) as exc:
            raise click.ClickException(str(exc)) from None
    failed = [(item, error) for item, error in results if error is not None]
    for item, error in failed:
        click.echo(f"not replayed {item.letter.source}: {error}", err=True)
    backfilled = sum(item.backfill for item in sent)
    click.echo(f"replayed {len(sent)} ({backfilled} with backfill); {counts}")
    if failed or plan.unreplayable:
        sys.exit(1)
