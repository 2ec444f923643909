#!/usr/bin/env python3
"""Print what sgw-control provisioned on an S3/SNS/SQS endpoint, as one JSON object.

    sdk_cloud_state.py --endpoint http://127.0.0.1:PORT BUCKET [BUCKET...]
    sdk_cloud_state.py --endpoint URL --set-foreign-rule BUCKET PREFIX

{"topics": [arn...], "queues": [url...],
 "subscriptions": [{"topic", "endpoint", "protocol", "raw": bool}],
 "notifications": {"bucket": [{"id", "topic", "events", "prefix"}]}}

--set-foreign-rule adds a queue notification rule on BUCKET for PREFIX, as another tool
would, keeping the rules already there (used to prove overlap detection).
Credentials: AWS_ACCESS_KEY_ID etc., defaulting to moto's "testing".
"""
import argparse
import json
import os

import boto3


def client(service, endpoint):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
    )


def prefix_of(rule):
    for f in rule.get("Filter", {}).get("Key", {}).get("FilterRules", []):
        if f["Name"].lower() == "prefix":
            return f["Value"]
    return ""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--set-foreign-rule", nargs=2, metavar=("BUCKET", "PREFIX"))
    parser.add_argument("buckets", nargs="*")
    args = parser.parse_args()
    s3, sns, sqs = (client(s, args.endpoint) for s in ("s3", "sns", "sqs"))
    if args.set_foreign_rule:
        bucket, prefix = args.set_foreign_rule
        url = sqs.create_queue(QueueName="foreign-tool-queue")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        config = s3.get_bucket_notification_configuration(Bucket=bucket)
        config.pop("ResponseMetadata", None)
        config.setdefault("QueueConfigurations", []).append({
            "Id": "foreign-tool",
            "QueueArn": arn,
            "Events": ["s3:ObjectCreated:*"],
            "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}},
        })
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=config)
        print(json.dumps({"ok": True}))
        return
    topics = [t["TopicArn"] for t in sns.list_topics().get("Topics", [])]
    queues = sqs.list_queues().get("QueueUrls", [])
    subscriptions = []
    for sub in sns.list_subscriptions().get("Subscriptions", []):
        attrs = sns.get_subscription_attributes(SubscriptionArn=sub["SubscriptionArn"])["Attributes"]
        subscriptions.append({
            "topic": sub["TopicArn"],
            "endpoint": sub["Endpoint"],
            "protocol": sub["Protocol"],
            "raw": attrs.get("RawMessageDelivery", "false").lower() == "true",
        })
    notifications = {}
    for bucket in args.buckets:
        config = s3.get_bucket_notification_configuration(Bucket=bucket)
        rules = []
        for kind, target in (("TopicConfigurations", "TopicArn"), ("QueueConfigurations", "QueueArn")):
            for rule in config.get(kind, []):
                rules.append({
                    "id": rule.get("Id"),
                    "target": rule[target],
                    "events": sorted(rule["Events"]),
                    "prefix": prefix_of(rule),
                })
        notifications[bucket] = rules
    print(json.dumps({"topics": topics, "queues": queues, "subscriptions": subscriptions,
                      "notifications": notifications}, sort_keys=True))


if __name__ == "__main__":
    main()
