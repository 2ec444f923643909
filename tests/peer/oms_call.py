#!/usr/bin/env python3
"""Drive sgw-control's OMS sync-task API with the OFFICIAL, unmodified Huawei Cloud SDK.

    oms_call.py < calls.json

reads a JSON array of calls and prints a JSON array of results, one per call, in one process
(the SDK takes a while to import). Each call:

  {"endpoint": "127.0.0.1:PORT", "ak": AK, "sk": SK, "project": PROJECT_ID,
   "action": "CreateSyncTask" | "ListSyncTasks" | "ShowSyncTask" | "StopSyncTask" |
             "StartSyncTask" | "DeleteSyncTask" | "CreateSyncEvents" | "ListSyncTaskStatistic",
   "params": {...}}

params are the SDK model's field names: CreateSyncTask takes CreateSyncTaskReq's fields
(source_cdn as a SourceCdnReq dict); StartSyncTask {"sync_task_id", "body": StartSyncTaskReq};
CreateSyncEvents {"sync_task_id", "object_keys"}; the others their request's fields.

  {"action": "Raw", "params": {"method", "path", "query": [[k, v]], "body": any JSON or
   "body_text": str, "headers": {...}, "repeat": N}}

signs with the SDK's own Signer (huaweicloudsdkcore.signer.Signer), so a test can send what the
typed models refuse to build (unknown fields, wrong types), a fixed X-Sdk-Date (stale dates,
replays: "repeat" sends the very same signed request N times).

Results: {"ok": true, "status": 200, "body": {...}} or
         {"ok": false, "status": 400, "code": "OMS.0001", "message": "...", "request_id": ...}
(Raw: {"status", "body"} for each send, a list when repeat > 1.)
"""
import json
import sys


def client(call):
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.http.http_config import HttpConfig
    from huaweicloudsdkoms.v2 import OmsClient

    config = HttpConfig.get_default_config()
    config.retry_times = 0
    config.timeout = (5, 60)
    return (
        OmsClient.new_builder()
        .with_credentials(BasicCredentials(call["ak"], call["sk"], call["project"]))
        .with_endpoints(["http://" + call["endpoint"]])
        .with_http_config(config)
        .build()
    )


def typed(call):
    from huaweicloudsdkcore.exceptions import exceptions
    import huaweicloudsdkoms.v2 as m

    c = client(call)
    p = dict(call.get("params") or {})
    action = call["action"]
    if action == "CreateSyncTask":
        if isinstance(p.get("source_cdn"), dict):
            p["source_cdn"] = m.SourceCdnReq(**p["source_cdn"])
        request = m.CreateSyncTaskRequest(body=m.CreateSyncTaskReq(**p))
    elif action == "StartSyncTask":
        request = m.StartSyncTaskRequest(
            sync_task_id=p["sync_task_id"], body=m.StartSyncTaskReq(**(p.get("body") or {}))
        )
    elif action == "CreateSyncEvents":
        request = m.CreateSyncEventsRequest(
            sync_task_id=p["sync_task_id"], body=m.SyncObjectReq(object_keys=p["object_keys"])
        )
    else:
        request = getattr(m, action + "Request")(**p)
    method = getattr(c, "".join("_" + ch.lower() if ch.isupper() else ch for ch in action).lstrip("_"))
    try:
        response = method(request)
    except exceptions.ClientRequestException as e:
        return {
            "ok": False,
            "status": e.status_code,
            "code": e.error_code,
            "message": e.error_msg,
            "request_id": e.request_id,
        }
    body = response.to_dict()
    return {"ok": True, "status": response.status_code, "body": body}


def raw(call):
    import requests
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.sdk_request import SdkRequest
    from huaweicloudsdkcore.signer.signer import Signer

    p = call["params"]
    headers = {"Content-Type": "application/json"}
    headers.update(p.get("headers") or {})
    if "body_text" in p:
        body = p["body_text"].encode()
    elif "body" in p:
        body = json.dumps(p["body"]).encode()
    else:
        body = b""
    if p.get("project_header", True):
        headers["X-Project-Id"] = call["project"]
    request = SdkRequest(
        method=p["method"],
        schema="http",
        host=call["endpoint"],
        resource_path=p["path"],
        query_params=[tuple(q) for q in p.get("query") or []],
        header_params=headers,
        body=body,
    )
    if p.get("unsigned"):
        Signer.process_request_uri(request)
    else:
        request = Signer(BasicCredentials(call["ak"], call["sk"], call["project"])).sign(request)
    url = "http://%s%s" % (call["endpoint"], request.uri)
    out = []
    for _ in range(int(p.get("repeat", 1))):
        r = requests.request(p["method"], url, headers=request.header_params, data=body, timeout=60)
        try:
            parsed = r.json()
        except ValueError:
            parsed = r.text
        out.append({"status": r.status_code, "body": parsed})
    return out[0] if len(out) == 1 else out


def s3(call):
    """Test-side S3 helpers on the peer (moto): "S3Put" with a content type and user metadata,
    "S3Head" returning them with the CRC-64/NVME."""
    import boto3

    p = call["params"]
    client = boto3.client(
        "s3",
        endpoint_url=p["endpoint_url"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    if call["action"] == "S3Put":
        client.put_object(
            Bucket=p["bucket"],
            Key=p["key"],
            Body=p["body_text"].encode(),
            ContentType=p.get("content_type", "binary/octet-stream"),
            Metadata=p.get("metadata") or {},
            StorageClass=p.get("storage_class", "STANDARD"),
            ChecksumAlgorithm="CRC64NVME",
        )
        return {"ok": True}
    head = client.head_object(Bucket=p["bucket"], Key=p["key"], ChecksumMode="ENABLED")
    return {
        "size": head["ContentLength"],
        "content_type": head.get("ContentType"),
        "metadata": head.get("Metadata") or {},
        "crc64nvme": head.get("ChecksumCRC64NVME"),
        "storage_class": head.get("StorageClass"),
    }


def main():
    calls = json.load(sys.stdin)
    results = []
    for call in calls:
        if call["action"] == "Raw":
            results.append(raw(call))
        elif call["action"] in ("S3Put", "S3Head"):
            results.append(s3(call))
        else:
            results.append(typed(call))
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
