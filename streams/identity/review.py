"""`clinstream mpi review`: the human side of the review band.

The identity stage puts review-band pairs on ``mpi.review``; a person lists
them here and accepts (same person: merge) or rejects (different people). A
decision is an event on ``mpi.review`` too (``type: review-decision``, next to
the request it answers); the identity stage applies accepted ones as merges
(a ``merge`` event on ``mpi.links``), and a decided review no longer lists.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Iterable
from typing import Any

import orjson

from schemas.envelope import utc_now_iso
from topology.model import MPI_REVIEW

DECISION = "review-decision"


def open_reviews(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Review requests on ``mpi.review`` that no decision answers yet (in arrival order)."""
    records = list(records)
    decided = {r.get("review_id") for r in records if r.get("type") == DECISION}
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("type") != DECISION and r.get("review_id") not in decided:
            out[r["review_id"]] = r
    return list(out.values())


def decision_event(review: dict[str, Any], accept: bool, by: str, note: str = "") -> dict[str, Any]:
    return {
        "type": DECISION,
        "decision": "accept" if accept else "reject",
        "review_id": review["review_id"],
        "euid": review["euid"],
        "candidate_euid": review["candidate_euid"],
        "by": by,
        "note": note,
        "at": utc_now_iso(),
    }


def add_review_parser(mpi_sub: Any) -> None:
    p = mpi_sub.add_parser("review", help="list review-band pairs; accept or reject them")
    sub = p.add_subparsers(dest="review_command", required=True)
    ls = sub.add_parser("list", help="open reviews")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=review_command)
    for name in ("accept", "reject"):
        d = sub.add_parser(name, help=f"{name} a review (a decision event on {MPI_REVIEW})")
        d.add_argument("review_id")
        d.add_argument("--by", default=None, help="reviewer (default: login name)")
        d.add_argument("--note", default="")
        d.set_defaults(func=review_command)


def _load(settings: Any, topic: str) -> list[dict[str, Any]]:
    from streams.topic_reader import TopicNotFound, read_topic

    try:
        return [orjson.loads(m.value()) for m in read_topic(settings, topic) if m.value()]
    except TopicNotFound:
        return []


def review_command(args: argparse.Namespace) -> int:
    from confluent_kafka import Producer

    from topology.settings import KafkaSettings

    settings = KafkaSettings()
    settings.require_bootstrap()
    reviews = open_reviews(_load(settings, MPI_REVIEW))
    if args.review_command == "list":
        if args.json:
            print(orjson.dumps(reviews).decode())
            return 0
        if not reviews:
            print("no open reviews")
        for r in reviews:
            print(f"{r['review_id']}  {r['euid']} ~ {r['candidate_euid']}  p={r['score']:.3f}  "
                  f"{', '.join(r.get('reasons', []))}")
        return 0
    match = next((r for r in reviews if r["review_id"] == args.review_id), None)
    if match is None:
        print(f"clinstream mpi review: no open review {args.review_id!r}", file=sys.stderr)
        return 1
    event = decision_event(match, args.review_command == "accept", args.by or getpass.getuser(), args.note)
    producer = Producer(settings.librdkafka_producer())
    producer.produce(MPI_REVIEW, orjson.dumps(event), key=match["euid"].encode())
    if producer.flush(30):
        print("clinstream mpi review: decision not delivered", file=sys.stderr)
        return 1
    print(f"{event['decision']}ed review {match['review_id']}")
    return 0
