#!/usr/bin/env python3
"""Call one sgw (2018-05-11) action through an OFFICIAL, unmodified Alibaba Cloud SDK.

    sdk_call.py --sdk tea|rpc --endpoint 127.0.0.1:PORT --ak AK --secret SK \
        ACTION [--params JSON] [--format XML]

--sdk tea  alibabacloud-sgw20180511 (tea-openapi, ACS3-HMAC-SHA256 in Authorization)
--sdk rpc  aliyun-python-sdk-sgw + aliyun-python-sdk-core (classic RPC, HMAC-SHA1 Signature)

--params is a JSON object of API parameter names to values, e.g.
{"Name": "g1", "BucketRegion": "us-east-1", "IsExternal": true}; JSON types are passed to the
SDK as they are, so a test can send a wrong type the way a careless caller would.

Prints one JSON line:
  {"ok": true, "status": 200, "body": {...}}                  (XML answers: "xml": "...")
  {"ok": false, "status": 400, "code": "...", "message": "...", "request_id": "..."}
Exit status 0 either way; 2 for a driver error (bad arguments, SDK missing).

    sdk_call.py --batch < calls.json

runs a JSON array of calls ({"sdk","endpoint","ak","secret","action","params","format"}) in
one process (the SDKs take ~0.5 s to import) and prints a JSON array of the results.
"""
import argparse
import json
import re
import sys


def snake(name):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def call_tea(args, params):
    from alibabacloud_tea_openapi.models import Config
    from alibabacloud_tea_util.models import RuntimeOptions
    from alibabacloud_sgw20180511.client import Client
    from alibabacloud_sgw20180511 import models

    config = Config(
        access_key_id=args.ak,
        access_key_secret=args.secret,
        endpoint=args.endpoint,
        protocol="http",
        read_timeout=30000,
        connect_timeout=5000,
    )
    client = Client(config)
    request_cls = getattr(models, args.action + "Request", None)
    if request_cls is None:
        raise SystemExit(f"sdk_call: the tea SDK has no action {args.action}")
    request = request_cls()
    # from_map takes the API parameter names (ExpressSyncId, GatewayShares, ...).
    request.from_map(params)
    method = getattr(client, snake(args.action) + "_with_options")
    try:
        response = method(request, RuntimeOptions(autoretry=False, max_attempts=1))
    except Exception as e:  # the SDK raises its own exception types for 4xx/5xx
        data = getattr(e, "data", None) or {}
        return {
            "ok": False,
            "status": getattr(e, "status_code", None) or data.get("statusCode"),
            "code": getattr(e, "code", None),
            "message": data.get("Message") if isinstance(data, dict) else None,
            "request_id": getattr(e, "request_id", None),
            "exception": type(e).__name__,
        }
    return {"ok": True, "status": response.status_code, "body": response.body.to_map()}


def call_rpc(args, params):
    import importlib
    from aliyunsdkcore.client import AcsClient
    from aliyunsdkcore.acs_exception.exceptions import ServerException

    try:
        module = importlib.import_module(f"aliyunsdksgw.request.v20180511.{args.action}Request")
    except ImportError:
        raise SystemExit(f"sdk_call: the RPC SDK has no action {args.action}")
    request = getattr(module, f"{args.action}Request")()
    for name, value in params.items():
        setter = getattr(request, f"set_{name}", None)
        if setter is None:
            raise SystemExit(f"sdk_call: {args.action}Request has no parameter {name}")
        setter(value)
    request.set_endpoint(args.endpoint)
    request.set_protocol_type("http")
    client = AcsClient(args.ak, args.secret, "us-east-1", auto_retry=False, max_retry_time=0)
    if args.format:
        request.set_accept_format(args.format)
        status, _headers, body, error = client._implementation_of_do_action(request)
        if error is not None and status is None:
            raise SystemExit(f"sdk_call: transport error: {error}")
        text = body.decode("utf-8", "replace")
        if args.format.upper() == "XML":
            return {"ok": 200 <= status < 300, "status": status, "xml": text}
        return {"ok": 200 <= status < 300, "status": status, "body": json.loads(text)}
    try:
        body = client.do_action_with_exception(request)
    except ServerException as e:
        return {
            "ok": False,
            "status": e.get_http_status(),
            "code": e.get_error_code(),
            "message": e.get_error_msg(),
            "request_id": e.get_request_id(),
        }
    return {"ok": True, "status": 200, "body": json.loads(body)}


def run_batch():
    calls = json.load(sys.stdin)
    results = []
    for call in calls:
        args = argparse.Namespace(
            sdk=call["sdk"],
            endpoint=call["endpoint"],
            ak=call["ak"],
            secret=call["secret"],
            action=call["action"],
            format=call.get("format"),
        )
        params = call.get("params") or {}
        results.append(call_tea(args, params) if args.sdk == "tea" else call_rpc(args, params))
    print(json.dumps(results, sort_keys=True))


def main():
    if sys.argv[1:] == ["--batch"]:
        return run_batch()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sdk", choices=["tea", "rpc"], required=True)
    parser.add_argument("--endpoint", required=True, help="host:port of sgw-control")
    parser.add_argument("--ak", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--params", default="{}", help="JSON object of API parameters")
    parser.add_argument("--format", help="RPC only: XML or JSON answer format")
    parser.add_argument("action")
    args = parser.parse_args()
    try:
        params = json.loads(args.params)
    except ValueError as e:
        raise SystemExit(f"sdk_call: --params is not JSON: {e}")
    if not isinstance(params, dict):
        raise SystemExit("sdk_call: --params must be a JSON object")
    result = call_tea(args, params) if args.sdk == "tea" else call_rpc(args, params)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    try:
        main()
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            sys.exit(2)
        raise
