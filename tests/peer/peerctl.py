#!/usr/bin/env python3
"""Drive the real test peer (moto_server: S3 + SNS + SQS) for sgw-agent's integration tests.

Every subcommand prints one JSON object on stdout. Errors go to stderr as one clear line and
exit non-zero (1 for peer/request failures, 2 for bad arguments; `compare-dir --exit-code`
exits 3 when the directory does not match).

Content written by `put-many` is a pure function of the key (see `content_for_key`), so a test
can verify a downloaded file without keeping a copy. tests/common/mod.rs mirrors it.
"""

import argparse
import base64
import hashlib
import json
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}

# Real S3 stores a CRC-64/NVME for every new object; sending it explicitly makes moto store one
# too, so the agent's CRC-64 verification is exercised on ordinary objects.
DEFAULT_CHECKSUM = "CRC64NVME"
CHECKSUM_CHOICES = ["CRC64NVME", "CRC32", "CRC32C", "SHA1", "SHA256", "sdk-default", "none"]


class PeerError(Exception):
    """A failure worth one line on stderr and exit status 1."""


def content_for_key(key: str, size: int) -> bytes:
    """Deterministic body: SHA-256 of the UTF-8 key, repeated and cut to `size` bytes."""
    seed = hashlib.sha256(key.encode("utf-8")).digest()
    reps = size // len(seed) + 1
    return (seed * reps)[:size]


def many_key(prefix: str, index: int) -> str:
    """Key of object `index` written by `put-many` without --keys-file."""
    return f"{prefix}{index:06d}.bin"


def crc64nvme_b64(data: bytes) -> str:
    from awscrt import checksums

    return base64.b64encode(checksums.crc64nvme(data).to_bytes(8, "big")).decode("ascii")


def client(endpoint: str, service: str, checksum: str = DEFAULT_CHECKSUM, pool: int = 10):
    import boto3
    from botocore.config import Config

    # "none" must really send no checksum: botocore >= 1.36 adds CRC32 unless told otherwise.
    calc = "when_required" if checksum == "none" else "when_supported"
    config = Config(
        region_name=REGION,
        s3={"addressing_style": "path"},
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
        max_pool_connections=pool,
        request_checksum_calculation=calc,
        # Serve back exactly what the peer stores: `get` must fetch the corrupt fixture too.
        response_checksum_validation="when_required",
    )
    session = boto3.session.Session(region_name=REGION, **CREDENTIALS)
    return session.client(service, endpoint_url=endpoint, config=config)


def checksum_args(checksum: str) -> dict:
    if checksum in ("sdk-default", "none"):
        return {}
    return {"ChecksumAlgorithm": checksum}


def put_one(s3, bucket: str, key: str, body: bytes, checksum: str) -> dict:
    resp = s3.put_object(Bucket=bucket, Key=key, Body=body, **checksum_args(checksum))
    return {"key": key, "size": len(body), "etag": resp.get("ETag", "").strip('"')}


def cmd_make_bucket(args):
    s3 = client(args.endpoint, "s3")
    s3.create_bucket(Bucket=args.name)
    return {"bucket": args.name}


def cmd_put(args):
    if args.data_file is not None:
        try:
            with open(args.data_file, "rb") as f:
                body = f.read()
        except OSError as e:
            raise PeerError(f"cannot read --data-file {args.data_file}: {e.strerror}") from e
    else:
        body = args.text.encode("utf-8")
    s3 = client(args.endpoint, "s3", args.checksum)
    out = put_one(s3, args.bucket, args.key, body, args.checksum)
    out["crc64nvme"] = crc64nvme_b64(body)
    return out


def read_keys_file(path: str) -> list:
    try:
        with open(path, encoding="utf-8") as f:
            keys = [line.rstrip("\n") for line in f]
    except OSError as e:
        raise PeerError(f"cannot read --keys-file {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise PeerError(f"--keys-file {path} is not UTF-8: {e}") from e
    return [k for k in keys if k]


def cmd_put_many(args):
    if (args.count is not None and args.count < 0) or args.size < 0:
        raise PeerError("--count and --size must not be negative")
    if args.keys_file is not None:
        names = read_keys_file(args.keys_file)
        if args.count is not None and args.count < len(names):
            names = names[: args.count]
        keys = [args.prefix + name for name in names]
    else:
        keys = [many_key(args.prefix, i) for i in range(args.count)]
    workers = max(1, min(args.workers, 32))
    # One client (thread-safe) with a pool as wide as the worker count: no per-object set-up.
    s3 = client(args.endpoint, "s3", args.checksum, pool=workers)

    def put(key):
        put_one(s3, args.bucket, key, content_for_key(key, args.size), args.checksum)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        # list() re-raises the first failure here, in the main thread.
        list(pool.map(put, keys))
    return {"count": len(keys), "size": args.size}


def cmd_put_corrupt(args):
    body = args.text.encode("utf-8")
    right = crc64nvme_b64(body)
    # Flip every bit of the true value: guaranteed wrong, still a well-formed 8-byte base64.
    wrong_bytes = bytes(b ^ 0xFF for b in base64.b64decode(right))
    wrong = base64.b64encode(wrong_bytes).decode("ascii")
    s3 = client(args.endpoint, "s3")
    # With ChecksumCRC64NVME given, botocore sends our value (and x-amz-sdk-checksum-algorithm)
    # instead of computing one; moto stores it unchecked.
    s3.put_object(
        Bucket=args.bucket,
        Key=args.key,
        Body=body,
        ChecksumAlgorithm="CRC64NVME",
        ChecksumCRC64NVME=wrong,
    )
    head = s3.head_object(Bucket=args.bucket, Key=args.key, ChecksumMode="ENABLED")
    stored = head.get("ChecksumCRC64NVME")
    if stored != wrong:
        raise PeerError(
            f"peer did not keep the wrong checksum (stored {stored!r}, sent {wrong!r}); "
            "the corrupt-object fixture does not work with this peer"
        )
    return {"key": args.key, "size": len(body), "stored_crc64nvme": wrong, "true_crc64nvme": right}


def cmd_delete(args):
    s3 = client(args.endpoint, "s3")
    s3.delete_object(Bucket=args.bucket, Key=args.key)
    return {"deleted": args.key}


def cmd_send(args):
    """Put a raw message into a queue (malformed-message tests)."""
    sqs = client(args.endpoint, "sqs")
    out = sqs.send_message(QueueUrl=args.queue_url, MessageBody=args.body)
    return {"message_id": out["MessageId"]}


def cmd_delete_many(args):
    """One DeleteObject per key (not DeleteObjects), so each emits its own event."""
    keys = read_keys_file(args.keys_file)
    s3 = client(args.endpoint, "s3", pool=8)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda k: s3.delete_object(Bucket=args.bucket, Key=k), keys))
    return {"deleted": len(keys)}


def cmd_head(args):
    s3 = client(args.endpoint, "s3")
    head = s3.head_object(Bucket=args.bucket, Key=args.key, ChecksumMode="ENABLED")
    return {
        "key": args.key,
        "size": head["ContentLength"],
        "etag": head.get("ETag", "").strip('"'),
        "crc64nvme": head.get("ChecksumCRC64NVME"),
        "checksum_type": head.get("ChecksumType"),
        # Whole seconds since the epoch: what a file's mtime should equal after a download.
        "last_modified": int(head["LastModified"].timestamp()),
    }


def cmd_get(args):
    s3 = client(args.endpoint, "s3")
    resp = s3.get_object(Bucket=args.bucket, Key=args.key)
    size = 0
    try:
        with open(args.out, "wb") as f:
            for chunk in resp["Body"].iter_chunks(1 << 20):
                f.write(chunk)
                size += len(chunk)
    except OSError as e:
        raise PeerError(f"cannot write --out {args.out}: {e.strerror}") from e
    return {"key": args.key, "size": size, "out": args.out}


def cmd_list(args):
    s3 = client(args.endpoint, "s3")
    objects = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=args.bucket, Prefix=args.prefix):
        for obj in page.get("Contents", []):
            objects.append(
                {"key": obj["Key"], "size": obj["Size"], "etag": obj["ETag"].strip('"')}
            )
    return {"count": len(objects), "objects": objects}


RESERVED_TOP_LEVEL = ".sgw"  # the agent's own staging area inside a share


def unsafe_reason(rel: str):
    """Why the agent must skip a key (rel = key without the share prefix), or None.
    Mirrors key_to_relpath in src/cache/paths.rs, so compare-dir expects such keys absent."""
    if len(rel.encode("utf-8")) > 4096:
        return "path too long"
    if rel.startswith("/"):
        return "absolute"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in rel):
        return "control character"
    if "\\" in rel:
        return "backslash"
    body = rel[:-1] if rel.endswith("/") else rel
    for index, segment in enumerate(body.split("/")):
        if segment == "":
            return "empty segment"
        if segment in (".", ".."):
            return "dot segment"
        if len(segment.encode("utf-8")) > 255:
            return "segment too long"
        if index == 0 and segment.lower() == RESERVED_TOP_LEVEL:
            return "reserved"
    return None


def file_md5(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cmd_compare_dir(args):
    """Does DIR mirror BUCKET/PREFIX? Keys map to DIR/<key without prefix>; folder keys
    ("x/") to directories. Single-part objects are compared by MD5 (= ETag), others by size."""
    import os

    root = os.path.abspath(args.dir)
    if not os.path.isdir(root):
        raise PeerError(f"{args.dir} is not a directory")
    s3 = client(args.endpoint, "s3")
    missing, different, skipped, expected_files = [], [], [], set()
    objects = 0
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=args.bucket, Prefix=args.prefix)
    for page in pages:
        for obj in page.get("Contents", []):
            objects += 1
            rel = obj["Key"][len(args.prefix):]
            if rel == "":
                continue  # the prefix's own folder marker is the share root
            reason = unsafe_reason(rel)
            if reason is not None:
                skipped.append({"key": obj["Key"], "why": reason})
                continue
            path = os.path.join(root, rel)
            if rel.endswith("/"):
                if not os.path.isdir(path):
                    missing.append(obj["Key"])
                continue
            expected_files.add(os.path.normpath(rel))
            if not os.path.isfile(path):
                missing.append(obj["Key"])
                continue
            etag = obj["ETag"].strip('"')
            size = os.path.getsize(path)
            if size != obj["Size"]:
                different.append({"key": obj["Key"], "why": f"size {size} != {obj['Size']}"})
            elif "-" not in etag and file_md5(path) != etag:
                different.append({"key": obj["Key"], "why": "content (MD5 != ETag)"})
    extra, files = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == root:
            dirnames[:] = [d for d in dirnames if d.lower() != RESERVED_TOP_LEVEL]
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            files += 1
            if rel not in expected_files:
                extra.append(rel)
    limit = 20
    result = {
        "match": not (missing or different or extra),
        "objects": objects,
        "files": files,
        "missing_count": len(missing),
        "different_count": len(different),
        "extra_count": len(extra),
        "skipped_count": len(skipped),
        "missing": sorted(missing)[:limit],
        "different": different[:limit],
        "extra": sorted(extra)[:limit],
        "skipped": skipped[:limit],
    }
    return result


def cmd_wire_events(args):
    sns = client(args.endpoint, "sns")
    sqs = client(args.endpoint, "sqs")
    s3 = client(args.endpoint, "s3")
    topic_arn = sns.create_topic(Name=args.name)["TopicArn"]
    queue_url = sqs.create_queue(
        QueueName=args.name, Attributes={"VisibilityTimeout": str(args.visibility)}
    )["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    # moto does not enforce these policies; they are what AWS needs, so the fixture stays honest.
    sqs.set_queue_attributes(
        QueueUrl=queue_url,
        Attributes={
            "Policy": json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "sns.amazonaws.com"},
                            "Action": "sqs:SendMessage",
                            "Resource": queue_arn,
                            "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
                        }
                    ],
                }
            )
        },
    )
    sns.subscribe(
        TopicArn=topic_arn,
        Protocol="sqs",
        Endpoint=queue_arn,
        Attributes={"RawMessageDelivery": "true"},
    )
    topic_config = {
        "TopicArn": topic_arn,
        "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
    }
    if args.prefix:
        topic_config["Filter"] = {"Key": {"FilterRules": [{"Name": "prefix", "Value": args.prefix}]}}
    # The s3:TestEvent this triggers is left in the queue on purpose: the agent must skip it.
    s3.put_bucket_notification_configuration(
        Bucket=args.bucket,
        NotificationConfiguration={"TopicConfigurations": [topic_config]},
    )
    return {"topic_arn": topic_arn, "queue_url": queue_url}


def cmd_subscribe_queue(args):
    """A second queue on an existing topic (a second share of one express sync group)."""
    sns = client(args.endpoint, "sns")
    sqs = client(args.endpoint, "sqs")
    queue_url = sqs.create_queue(
        QueueName=args.name, Attributes={"VisibilityTimeout": str(args.visibility)}
    )["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    sns.subscribe(
        TopicArn=args.topic_arn,
        Protocol="sqs",
        Endpoint=queue_arn,
        Attributes={"RawMessageDelivery": "true"},
    )
    return {"queue_url": queue_url}


def cmd_queue_depth(args):
    sqs = client(args.endpoint, "sqs")
    attrs = sqs.get_queue_attributes(
        QueueUrl=args.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    visible = int(attrs.get("ApproximateNumberOfMessages", 0))
    not_visible = int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0))
    return {"visible": visible, "not_visible": not_visible, "depth": visible + not_visible}


def cmd_receive(args):
    """Receive (and by default leave) up to --max messages; bodies are parsed when JSON."""
    sqs = client(args.endpoint, "sqs")
    resp = sqs.receive_message(
        QueueUrl=args.queue_url,
        MaxNumberOfMessages=max(1, min(args.max, 10)),
        WaitTimeSeconds=max(0, min(args.wait, 20)),
        VisibilityTimeout=max(0, args.visibility),
    )
    messages = []
    for msg in resp.get("Messages", []):
        try:
            body = json.loads(msg["Body"])
        except ValueError:
            body = msg["Body"]
        messages.append({"body": body, "receipt_handle": msg["ReceiptHandle"]})
        if args.delete:
            sqs.delete_message(QueueUrl=args.queue_url, ReceiptHandle=msg["ReceiptHandle"])
    return {"count": len(messages), "messages": messages}


def cmd_reset(args):
    req = urllib.request.Request(args.endpoint.rstrip("/") + "/moto-api/reset", method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return {"reset": resp.status == 200}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="peerctl.py", description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", required=True, help="peer base URL, e.g. http://127.0.0.1:5000")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("make-bucket")
    s.add_argument("name")
    s.set_defaults(func=cmd_make_bucket)

    s = sub.add_parser("put")
    s.add_argument("bucket")
    s.add_argument("key")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--data-file")
    src.add_argument("--text")
    s.add_argument("--checksum", choices=CHECKSUM_CHOICES, default=DEFAULT_CHECKSUM)
    s.set_defaults(func=cmd_put)

    s = sub.add_parser("put-many")
    s.add_argument("bucket")
    s.add_argument("--count", type=int, help="objects to write (with --keys-file: at most)")
    s.add_argument("--size", type=int, required=True)
    s.add_argument("--prefix", default="")
    s.add_argument("--keys-file", help="UTF-8 file, one key (after --prefix) per line")
    s.add_argument("--workers", type=int, default=8)
    s.add_argument("--checksum", choices=CHECKSUM_CHOICES, default=DEFAULT_CHECKSUM)
    s.set_defaults(func=cmd_put_many)

    s = sub.add_parser("put-corrupt")
    s.add_argument("bucket")
    s.add_argument("key")
    s.add_argument("--text", required=True)
    s.set_defaults(func=cmd_put_corrupt)

    s = sub.add_parser("delete")
    s.add_argument("bucket")
    s.add_argument("key")
    s.set_defaults(func=cmd_delete)

    s = sub.add_parser("delete-many")
    s.add_argument("bucket")
    s.add_argument("--keys-file", required=True)
    s.set_defaults(func=cmd_delete_many)

    s = sub.add_parser("head")
    s.add_argument("bucket")
    s.add_argument("key")
    s.set_defaults(func=cmd_head)

    s = sub.add_parser("get")
    s.add_argument("bucket")
    s.add_argument("key")
    s.add_argument("--out", required=True, help="file to write the body to")
    s.set_defaults(func=cmd_get)

    s = sub.add_parser("list")
    s.add_argument("bucket")
    s.add_argument("--prefix", default="")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("compare-dir")
    s.add_argument("bucket")
    s.add_argument("dir")
    s.add_argument("--prefix", default="")
    s.add_argument("--exit-code", action="store_true", help="exit 3 when DIR does not match")
    s.set_defaults(func=cmd_compare_dir)

    s = sub.add_parser("wire-events")
    s.add_argument("bucket")
    s.add_argument("--prefix", default="")
    s.add_argument("--name", required=True, help="name of both the SNS topic and the SQS queue")
    s.add_argument("--visibility", type=int, default=30, help="queue VisibilityTimeout (s)")
    s.set_defaults(func=cmd_wire_events)

    s = sub.add_parser("subscribe-queue")
    s.add_argument("topic_arn")
    s.add_argument("--name", required=True, help="name of the new SQS queue")
    s.add_argument("--visibility", type=int, default=30, help="queue VisibilityTimeout (s)")
    s.set_defaults(func=cmd_subscribe_queue)

    s = sub.add_parser("send")
    s.add_argument("queue_url")
    s.add_argument("--body", required=True)
    s.set_defaults(func=cmd_send)

    s = sub.add_parser("queue-depth")
    s.add_argument("queue_url")
    s.set_defaults(func=cmd_queue_depth)

    s = sub.add_parser("receive")
    s.add_argument("queue_url")
    s.add_argument("--max", type=int, default=10)
    s.add_argument("--wait", type=int, default=0)
    s.add_argument("--visibility", type=int, default=30)
    s.add_argument("--delete", action="store_true")
    s.set_defaults(func=cmd_receive)

    s = sub.add_parser("reset")
    s.set_defaults(func=cmd_reset)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.command == "put-many" and args.count is None and args.keys_file is None:
        parser().error("put-many needs --count or --keys-file")
    try:
        import botocore.exceptions as bex
    except ImportError:
        print("peerctl: boto3 is not installed; run scripts/setup-peer.sh", file=sys.stderr)
        return 1
    try:
        result = args.func(args)
    except PeerError as e:
        print(f"peerctl {args.command}: {e}", file=sys.stderr)
        return 1
    except bex.ClientError as e:
        err = e.response.get("Error", {})
        print(
            f"peerctl {args.command}: {err.get('Code', '?')}: {err.get('Message', e)}",
            file=sys.stderr,
        )
        return 1
    except (bex.EndpointConnectionError, urllib.error.URLError, ConnectionError) as e:
        print(f"peerctl {args.command}: cannot reach {args.endpoint}: {e}", file=sys.stderr)
        return 1
    except (bex.BotoCoreError, OSError) as e:
        print(f"peerctl {args.command}: {e}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    if getattr(args, "exit_code", False) and not result.get("match", True):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
