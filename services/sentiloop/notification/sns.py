"""Publishes every stored event to an Amazon SNS topic (domain logic; no grpc here).

Configured by ``SENTILOOP_SNS_TOPIC_ARN``. The boto3 client takes its credentials,
region (``AWS_REGION`` / ``AWS_DEFAULT_REGION``, else the topic ARN's region) and
endpoint (``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_SNS``, for a fake such as moto)
from the environment, as every AWS tool does.

Each event becomes one SNS message whose body is the event as JSON, in the shape the
JSON API gives it (``GET /events``)::

    {"id": "12", "type": EventType.MODEL_PROMOTED, "subject": "v3", "message": "...",
     "attributes": {...}, "created_at": "2026-11-26T13:38:38.123456Z"}

with the message attributes ``event_type`` (String: subscribers filter on it with a
filter policy such as ``{"event_type": [{"prefix": "model."}]}``), ``subject`` (String,
when the event has one) and ``event_id`` (Number), and a ``Subject`` line for e-mail
subscribers (``Sentiloop model.promoted: v3``, cut to SNS's 100 characters)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from datetime import UTC
from typing import Any

from sentiloop.notification.events import Event

log = logging.getLogger("sentiloop.notification")

TOPIC_ARN_VARIABLE = "SENTILOOP_SNS_TOPIC_ARN"

# SNS's own limits: a Subject has at most 100 characters, no line breaks or control
# characters; a message attribute value must not be empty.
MAX_SUBJECT_LENGTH = 100
SUBJECT_PREFIX = "Sentiloop"
FIFO_GROUP_ID = "sentiloop-events"

ARN_PATTERN = re.compile(
    r"^arn:aws[a-z-]*:sns:([a-z0-9-]+):(\d{12}):([A-Za-z0-9_-]{1,256}(\.fifo)?)$"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def event_json(event: Event) -> str:
    """The event as the JSON API renders it (int64 id as a string, RFC 3339 time)."""
    created = event.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return json.dumps(
        {
            "id": str(event.id),
            "type": event.type,
            "subject": event.subject,
            "message": event.message,
            "attributes": event.attributes,
            "created_at": created,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


def subject_line(event: Event) -> str:
    """``Sentiloop TYPE: SUBJECT`` on one line, at most 100 characters."""
    line = f"{SUBJECT_PREFIX} {event.type}"
    subject = _CONTROL.sub(" ", event.subject).strip()
    if subject:
        line = f"{line}: {subject}"
    if len(line) > MAX_SUBJECT_LENGTH:
        line = line[: MAX_SUBJECT_LENGTH - 3].rstrip() + "..."
    return line


def publish_request(topic_arn: str, event: Event) -> dict[str, Any]:
    """The keyword arguments of the SNS ``Publish`` call for ``event``."""
    attributes: dict[str, dict[str, str]] = {
        "event_type": {"DataType": "String", "StringValue": event.type},
        "event_id": {"DataType": "Number", "StringValue": str(event.id)},
    }
    if event.subject:
        attributes["subject"] = {"DataType": "String", "StringValue": event.subject}
    request: dict[str, Any] = {
        "TopicArn": topic_arn,
        "Message": event_json(event),
        "Subject": subject_line(event),
        "MessageAttributes": attributes,
    }
    if topic_arn.endswith(".fifo"):
        # A FIFO topic keeps the events in order; the id and time make a duplicate
        # (a retried publish) recognisable even if the event log is ever reset.
        request["MessageGroupId"] = FIFO_GROUP_ID
        request["MessageDeduplicationId"] = f"{event.id}-{int(event.created_at.timestamp())}"
    return request


class SnsPublisher:
    """An ``EventPublisher``: each event becomes one SNS message (see the module doc).

    ``client`` is a boto3 SNS client (thread-safe); the blocking call runs in a worker
    thread so that the event loop never waits on the network."""

    def __init__(self, topic_arn: str, client: Any) -> None:
        self.topic_arn = topic_arn
        self._client = client

    async def publish(self, event: Event) -> None:
        request = publish_request(self.topic_arn, event)
        response = await asyncio.to_thread(self._client.publish, **request)
        log.debug(
            "event %d published to SNS",
            event.id,
            extra={"fields": {"event_id": event.id, "sns_message_id": response.get("MessageId")}},
        )

    def check(self) -> None:
        """Fails with ``SystemExit("configuration error: ...")`` unless the topic exists
        and the credentials may read it (one ``GetTopicAttributes`` call)."""
        from botocore.exceptions import (  # type: ignore[import-untyped,unused-ignore]
            BotoCoreError,
            ClientError,
            NoCredentialsError,
        )

        where = f"{TOPIC_ARN_VARIABLE}={self.topic_arn!r}"
        try:
            self._client.get_topic_attributes(TopicArn=self.topic_arn)
        except NoCredentialsError:
            raise SystemExit(
                f"configuration error: {where}: no AWS credentials found (set"
                " AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with a role)"
            ) from None
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            message = error.response.get("Error", {}).get("Message", "")
            if code in ("NotFound", "NotFoundException", "ResourceNotFound"):
                problem = "the topic does not exist (create it, or check the account and region)"
            elif code in ("AuthorizationError", "AccessDenied", "AccessDeniedException"):
                problem = f"not allowed to use the topic: {message or code}"
            elif code in (
                "InvalidClientTokenId",
                "UnrecognizedClientException",
                "SignatureDoesNotMatch",
                "ExpiredToken",
            ):
                problem = f"the AWS credentials were refused: {message or code}"
            else:
                problem = f"{code or 'error'}: {message or error}"
            raise SystemExit(f"configuration error: {where}: {problem}") from None
        except BotoCoreError as error:
            raise SystemExit(f"configuration error: {where}: cannot reach SNS: {error}") from None


def sns_client(topic_arn: str) -> Any:
    """A boto3 SNS client configured from the environment; the region defaults to the
    topic's own. Short timeouts: a publish must not hold up the event's other targets."""
    import boto3  # type: ignore[import-untyped,unused-ignore]
    from botocore.config import Config  # type: ignore[import-untyped,unused-ignore]

    match = ARN_PATTERN.match(topic_arn)
    session = boto3.session.Session()
    region = session.region_name or (match.group(1) if match else None)
    config = Config(
        connect_timeout=2,
        read_timeout=3,
        retries={"max_attempts": 3, "mode": "standard"},
    )
    return session.client("sns", region_name=region, config=config)


def open_sns_publisher(topic_arn: str) -> SnsPublisher:
    """The SNS publisher ``SENTILOOP_SNS_TOPIC_ARN`` asks for, checked."""
    if not ARN_PATTERN.match(topic_arn):
        raise SystemExit(
            f"configuration error: {TOPIC_ARN_VARIABLE}={topic_arn!r} is not an SNS topic ARN"
            " (arn:aws:sns:REGION:ACCOUNT_ID:NAME)"
        )
    publisher = SnsPublisher(topic_arn, sns_client(topic_arn))
    publisher.check()
    log.info("publishing events to SNS topic %s", topic_arn)
    return publisher
