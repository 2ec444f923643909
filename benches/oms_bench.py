#!/usr/bin/env python3
"""OMS sync task vs `rclone sync`: time to converge between the same two buckets (issue 13).

    SGW_CONTROL=target/release/sgw-control .venv/bin/python benches/oms_bench.py \
        [--count 10000 --size 4096] [--reps 3] [--transfers 4,16]

One moto_server on loopback holds the source and every destination; sgw-control (the binary
in $SGW_CONTROL) runs the OMS task with [[oms.endpoints]] pointing at it. Each repetition
alternates the tools (order flips every repetition), each into a fresh destination bucket:

- rclone: `rclone sync peer:src peer:<fresh>` with --transfers T (and --checkers 2T), timed
  from start to exit; once as it is (both buckets on one remote: it copies server-side with
  CopyObject, no bytes through rclone) and once with `--disable copy` (download + upload, what
  any tool must do between two clouds, and what the OMS task does);
- OMS: CreateSyncTask through the official huaweicloudsdkoms, timed until ShowSyncTask's
  monthly_success_object equals the object count (polled every 0.1 s), then the task is
  deleted.

Prints the medians. moto is one Python process: the figures compare the two clients on the
same server, they are not the server's capacity. Every process started here is stopped by pid.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("SGW_TEST_VENV", REPO / ".venv"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--transfers", default="4,16")
    args = ap.parse_args()

    import boto3
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkoms.v2 import (CreateSyncTaskReq, CreateSyncTaskRequest,
                                      DeleteSyncTaskRequest, OmsClient, ShowSyncTaskRequest)

    work = Path(tempfile.mkdtemp(prefix="oms-bench-"))
    procs = []
    try:
        moto_port = free_port()
        moto = subprocess.Popen([str(VENV / "bin" / "moto_server"), "-H", "127.0.0.1", "-p",
                                 str(moto_port)], stdout=open(work / "moto.log", "w"),
                                stderr=subprocess.STDOUT)
        procs.append(moto)
        wait_port(moto_port)
        endpoint = f"http://127.0.0.1:{moto_port}"
        ctl_port = free_port()
        (work / "control.toml").write_text(
            f'listen = "127.0.0.1:{ctl_port}"\ndata_dir = "{work}/data"\n'
            f'[cloud]\nendpoint = "{endpoint}"\nallow_http = true\n'
            f'[[oms.endpoints]]\ncloud_type = "AWS"\nregion = "us-east-1"\nurl = "{endpoint}"\n'
            f'allow_http = true\n[[oms.endpoints]]\ncloud_type = "HuaweiCloud"\n'
            f'region = "cn-north-4"\nurl = "{endpoint}"\nallow_http = true\n')
        env = dict(os.environ, SGW_ACCESS_KEY_ID="bench", SGW_ACCESS_KEY_SECRET="bench-secret",
                   AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", SGW_LOG="warn")
        ctl = subprocess.Popen([os.environ.get("SGW_CONTROL", str(REPO / "target/release/sgw-control")),
                                "-c", str(work / "control.toml")], env=env,
                               stdout=subprocess.DEVNULL, stderr=open(work / "control.log", "w"))
        procs.append(ctl)
        wait_port(ctl_port)

        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket="src")
        body = os.urandom(args.size)
        started = time.time()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: s3.put_object(Bucket="src", Key=f"obj/{i:06d}", Body=body,
                                                  ChecksumAlgorithm="CRC64NVME"),
                          range(args.count)))
        print(f"source: {args.count} x {args.size} B in {time.time() - started:.1f} s", flush=True)

        oms = (OmsClient.new_builder()
               .with_credentials(BasicCredentials("bench", "bench-secret", "bench"))
               .with_endpoints([f"http://127.0.0.1:{ctl_port}"]).build())
        rclone_env = dict(os.environ, RCLONE_CONFIG_PEER_TYPE="s3", RCLONE_CONFIG_PEER_PROVIDER="Other",
                          RCLONE_CONFIG_PEER_ENDPOINT=endpoint, RCLONE_CONFIG_PEER_FORCE_PATH_STYLE="true",
                          RCLONE_CONFIG_PEER_ACCESS_KEY_ID="testing",
                          RCLONE_CONFIG_PEER_SECRET_ACCESS_KEY="testing",
                          RCLONE_CONFIG_PEER_REGION="us-east-1")
        rclone_env.pop("AWS_CA_BUNDLE", None)
        seq = [0]

        def empty_previous():
            # Keep moto's memory flat: only the source and the current destination hold data.
            if seq[0] == 0:
                return
            name = f"dst-{seq[0]}"
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                for i in range(0, len(keys), 1000):
                    s3.delete_objects(Bucket=name, Delete={"Objects": keys[i:i + 1000]})

        def fresh():
            empty_previous()
            seq[0] += 1
            name = f"dst-{seq[0]}"
            s3.create_bucket(Bucket=name)
            return name

        def run_rclone(transfers, extra=()):
            dst = fresh()
            t = time.time()
            subprocess.run(["rclone", "sync", "peer:src", f"peer:{dst}", "--transfers",
                            str(transfers), "--checkers", str(2 * transfers), *extra],
                           env=rclone_env,
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return time.time() - t

        def run_oms():
            dst = fresh()
            t = time.time()
            created = oms.create_sync_task(CreateSyncTaskRequest(body=CreateSyncTaskReq(
                src_cloud_type="AWS", src_region="us-east-1", src_bucket="src", src_ak="testing",
                src_sk="testing", dst_ak="testing", dst_sk="testing", dst_region="cn-north-4",
                dst_bucket=dst)))
            while True:
                shown = oms.show_sync_task(ShowSyncTaskRequest(sync_task_id=created.sync_task_id))
                if shown.monthly_success_object >= args.count:
                    break
                time.sleep(0.1)
            elapsed = time.time() - t
            oms.delete_sync_task(DeleteSyncTaskRequest(sync_task_id=created.sync_task_id))
            return elapsed

        # rclone copies server-side (CopyObject) when both buckets are on one remote; with
        # --disable copy the bytes go through it, as they must between two clouds.
        tools = [("sgw-control OMS task", run_oms)] + [
            (f"rclone sync --transfers {n}", (lambda n=n: run_rclone(n)))
            for n in map(int, args.transfers.split(","))] + [
            (f"rclone --disable copy -T {n}", (lambda n=n: run_rclone(n, ("--disable", "copy"))))
            for n in map(int, args.transfers.split(","))]
        times = {name: [] for name, _ in tools}
        for rep in range(args.reps):
            order = tools if rep % 2 == 0 else list(reversed(tools))
            for name, fn in order:
                times[name].append(fn())
                print(f"rep {rep + 1}: {name}: {times[name][-1]:.2f} s", flush=True)
        print(f"\n{args.count} objects x {args.size} B, moto, {args.reps} alternating reps (medians):")
        best_rclone = min(statistics.median(v) for k, v in times.items() if k.startswith("rclone"))
        for name, v in times.items():
            med = statistics.median(v)
            print(f"  {name:28s} {med:7.2f} s   (runs: {', '.join(f'{x:.2f}' for x in v)})")
        oms_med = statistics.median(times["sgw-control OMS task"])
        print(f"  speed vs the best rclone: {best_rclone / oms_med:.2f}x")
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    sys.exit(main())
