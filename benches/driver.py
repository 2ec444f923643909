#!/usr/bin/env python3
"""Benchmark driver for sgw-agent against rclone and aws s3 sync (issue 5). Run by benches/run.sh.

One run, one machine, one loopback S3 server (s3s-fs) for throughput; moto (S3+SNS+SQS) for
event latency. Tools alternate within every repetition; medians and peer/agent ratios are
reported. Output: <out>/latest.json and <out>/latest.md.

Needs the interpreter of the peer venv (boto3, awscrt): run.sh passes it. Every process it
starts is stopped by its pid; every request goes to 127.0.0.1.
"""

import argparse
import base64
import ctypes
import ctypes.util
import datetime
import hashlib
import json
import os
import platform
import random
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "peer"))

ACCESS_KEY = "benchkey"
SECRET_KEY = "benchsecret-0123456789"
REGION = "us-east-1"
# Same mtime for every generated object: old enough that nothing looks "just written".
OBJECT_MTIME = 1_700_000_000

DATASETS = {
    # name: (objects, bytes each, key pattern)
    "small": (10_000, 4096),
    "large": (16, 64 * 1024 * 1024),
    # Through the delay proxy (section `wan`): fewer objects, the same shapes.
    "wan-small": (2_000, 4096),
    "wan-large": (4, 64 * 1024 * 1024),
}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on port {port} within {timeout} s")


def stop(proc, timeout=20.0):
    """SIGTERM the process we started (by pid), SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def median(values):
    return statistics.median(values) if values else None


def percentile(sorted_values, p):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, int(-(-p * len(sorted_values) // 100)))  # ceil(p/100 * n)
    return sorted_values[min(rank, len(sorted_values)) - 1]


def timed(cmd, env=None, log_path=None, cwd=None):
    """Run cmd; return (wall seconds, exit code, peak RSS KiB of the command).

    The peak comes from GNU time, not from our own wait4(): Linux carries the parent's
    high-water mark across fork+exec, so a child of this (large) Python process would report
    at least our RSS."""
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    rss_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"sgw-bench-rss-{os.getpid()}"
    try:
        start = time.monotonic()
        proc = subprocess.Popen(
            ["/usr/bin/time", "-q", "-f", "%M", "-o", str(rss_file), *cmd],
            env=env, stdout=out, stderr=out, cwd=cwd,
        )
        proc.wait()
        secs = time.monotonic() - start
        rss = int(rss_file.read_text().split()[-1])
    finally:
        if log_path:
            out.close()
        rss_file.unlink(missing_ok=True)
    return secs, proc.returncode, rss


def tree_stats(root, skip_top=(".sgw",)):
    """(files, bytes) under root, not counting the agent's own top-level directory."""
    files = size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root):
            dirnames[:] = [d for d in dirnames if d not in skip_top]
        for name in filenames:
            files += 1
            size += os.lstat(os.path.join(dirpath, name)).st_size
    return files, size


def fresh_dir(path, trash=None):
    """An empty directory at `path`. With `trash`, the old tree is moved there instead of
    deleted: on ext4 without a journal (this machine's root file system) every new inode
    is checked against the inodes deleted in the last minute, so deleting 10,000 files right
    before a run makes the next tool's creates several times slower. The trash is emptied
    after the section, outside any measurement."""
    if path.exists():
        if trash is None:
            shutil.rmtree(path)
        else:
            trash.mkdir(parents=True, exist_ok=True)
            path.rename(trash / f"{path.name}-{time.monotonic_ns()}")
    path.mkdir(parents=True)


# --- datasets on s3s-fs ---------------------------------------------------------------------


def dataset_keys(name):
    count, _ = DATASETS[name]
    if name in ("large", "wan-large"):
        return [f"big-{i:02d}.bin" for i in range(count)]
    # 100 (or 1000) folders: a realistic tree, and s3s-fs directories stay small.
    per_dir = 100
    return [f"d{i // per_dir:04d}/obj-{i:06d}.bin" for i in range(count)]


def b64url(text):
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def make_dataset(root, name):
    """Write the objects straight into s3s-fs's directory, with the internal metadata it keeps
    for a PUT (ETag and CRC-64/NVME), so GET and HEAD answer exactly as after an upload."""
    from awscrt import checksums

    count, size = DATASETS[name]
    bucket = f"bench-{name}"
    marker = root / f".ready-{name}-{count}-{size}"
    if marker.exists():
        return bucket
    log(f"creating dataset {name}: {count} x {size} bytes")
    bucket_dir = root / bucket
    if bucket_dir.exists():
        shutil.rmtree(bucket_dir)
    for old in root.glob(f".bucket-{b64url(bucket)}.object-*"):
        old.unlink()
    bucket_dir.mkdir(parents=True)
    rng = random.Random(f"sgw-bench-{name}")
    for key in dataset_keys(name):
        # Incompressible, distinct per object; cheap to make (a repeated random MiB for large).
        if size > (1 << 20):
            block = rng.randbytes(1 << 20)
            body = b"".join(
                bytes([i & 0xFF]) + block[1:] for i in range(size >> 20)
            )
        else:
            body = rng.randbytes(size)
        path = bucket_dir / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        os.utime(path, (OBJECT_MTIME, OBJECT_MTIME))
        crc = base64.b64encode(checksums.crc64nvme(body).to_bytes(8, "big")).decode()
        info = {"e_tag": hashlib.md5(body).hexdigest(), "checksum_crc64nvme": crc}
        (root / f".bucket-{b64url(bucket)}.object-{b64url(key)}.internal.json").write_text(
            json.dumps(info)
        )
    marker.write_text("ok\n")
    return bucket


# --- tools ----------------------------------------------------------------------------------


class Tools:
    def __init__(self, args, work, endpoint, ca=None, rclone_flags=()):
        self.args = args
        self.work = work
        self.endpoint = endpoint
        # A PEM CA every tool trusts (the delay proxy's TLS front), or None.
        self.ca = ca
        # Extra rclone flags for every rclone run (the wan section's --transfers 16).
        self.rclone_flags = list(rclone_flags)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
        base["AWS_ACCESS_KEY_ID"] = ACCESS_KEY
        base["AWS_SECRET_ACCESS_KEY"] = SECRET_KEY
        base["AWS_DEFAULT_REGION"] = REGION
        base["AWS_REGION"] = REGION
        self.env = base
        self.rclone_env = dict(
            base,
            RCLONE_CONFIG=str(work / "rclone.conf"),
            RCLONE_CONFIG_PEER_TYPE="s3",
            RCLONE_CONFIG_PEER_PROVIDER="Other",
            RCLONE_CONFIG_PEER_ENDPOINT=endpoint,
            RCLONE_CONFIG_PEER_ACCESS_KEY_ID=ACCESS_KEY,
            RCLONE_CONFIG_PEER_SECRET_ACCESS_KEY=SECRET_KEY,
            RCLONE_CONFIG_PEER_REGION=REGION,
            RCLONE_CONFIG_PEER_FORCE_PATH_STYLE="true",
        )
        (work / "rclone.conf").write_text("")
        self.aws_env = dict(
            base,
            AWS_CONFIG_FILE=str(work / "aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(work / "aws-credentials"),
        )
        (work / "aws-config").write_text("[default]\nregion = us-east-1\n")
        (work / "aws-credentials").write_text("")

    def agent_config(self, bucket, dest, state, extra=""):
        cfg = self.work / f"agent-{bucket}.toml"
        cfg.write_text(
            f'state_dir = "{state}"\n\n[[share]]\nname = "bench"\npath = "{dest}"\n'
            f'bucket = "{bucket}"\nendpoint = "{self.endpoint}"\nregion = "{REGION}"\n'
            f"allow_http = true\n"
            + (f'ca_file = "{self.ca}"\n' if self.ca else "")
            + extra
        )
        return cfg

    def variants(self):
        """name -> (command builder(bucket, dest, state) -> argv, env)."""
        a = self.args
        out = {}
        for name, extra, env_extra, binary in a.agent_variants:
            def agent(bucket, dest, state, extra=extra, binary=binary or a.agent):
                cfg = self.agent_config(bucket, dest, state, extra)
                return [binary, "-c", str(cfg), "sync", "-q"]

            out[name] = (agent, dict(self.env, **env_extra))

        ca_flags = (["--ca-cert", str(self.ca)] if self.ca else []) + self.rclone_flags

        def rclone(flags):
            def build(bucket, dest, state):
                return [a.rclone, "sync", f"peer:{bucket}", str(dest), *flags, *ca_flags]

            return build

        out["rclone"] = (rclone([]), self.rclone_env)
        out["rclone-nokeepalive"] = (rclone(["--disable-http-keep-alives"]), self.rclone_env)

        def aws(bucket, dest, state):
            return [
                a.aws, "s3", "sync", f"s3://{bucket}", str(dest),
                "--endpoint-url", self.endpoint, "--no-progress", "--only-show-errors",
                *(["--ca-bundle", str(self.ca)] if self.ca else []),
            ]

        out["aws"] = (aws, self.aws_env)
        return out


def warm_page_cache(root, bucket):
    """Read the dataset once, so the first tool of the first repetition does not pay for the
    server's disk reads that every later run gets from the page cache."""
    for dirpath, _, filenames in os.walk(root / bucket):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                while f.read(1 << 20):
                    pass


class FreshExt4:
    """A freshly made ext4 for every run, on a loop device: mkfs.ext4's defaults (with its
    journal), as on an appliance's SD card or disk. No earlier files, no earlier deletions;
    fsync costs a journal commit and a device flush, as it does there."""

    def __init__(self, work, size_mib=2048):
        self.img = work / "ext4.img"
        self.mnt = work / "ext4-mnt"
        self.size = size_mib << 20

    @staticmethod
    def available():
        return (os.geteuid() == 0 and shutil.which("mkfs.ext4") is not None
                and shutil.which("losetup") is not None and Path("/dev/loop-control").exists())

    def fresh(self):
        self.unmount()
        self.mnt.mkdir(parents=True, exist_ok=True)
        with open(self.img, "wb") as f:
            f.truncate(self.size)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(self.img)], check=True)
        subprocess.run(["mount", "-o", "loop", str(self.img), str(self.mnt)], check=True)
        return self.mnt

    def unmount(self):
        if os.path.ismount(self.mnt):
            subprocess.run(["umount", str(self.mnt)], check=True)

    def close(self):
        self.unmount()
        self.img.unlink(missing_ok=True)


def bench_sync(tools, bucket, dataset, reps, names, results, work, fs=None, key=None):
    """Full sync into an empty directory, then a no-op re-sync, per tool, alternating. With
    `fs` (FreshExt4), each run gets a new file system; results go under `key`."""
    key = key or dataset
    count, size = DATASETS[dataset]
    warm_page_cache(work / "s3root", bucket)
    variants = tools.variants()
    names = [n for n in names if n in variants]
    # Many small files: keep deletions out of the runs (see fresh_dir; main() empties it).
    trash = work / "trash" if count >= 1000 else None
    for rep in range(reps):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for name in order:
            build, env = variants[name]
            root = fs.fresh() if fs else work
            dest = root / "dest" / name
            state = root / "state" / name
            fresh_dir(dest, None if fs else trash)
            fresh_dir(state, None if fs else trash)
            os.sync()
            logf = work / "logs" / f"{dataset}-{name}.log"
            secs, rc, rss = timed(build(bucket, dest, state), env, logf)
            files, nbytes = tree_stats(dest)
            ok = rc == 0 and files == count and nbytes == count * size
            os.sync()
            nsecs, nrc, nrss = timed(build(bucket, dest, state), env, logf)
            entry = results.setdefault(key, {}).setdefault(
                name, {"full_s": [], "noop_s": [], "peak_rss_kib": [], "noop_rss_kib": [], "ok": True}
            )
            entry["full_s"].append(round(secs, 3))
            entry["noop_s"].append(round(nsecs, 3))
            entry["peak_rss_kib"].append(rss)
            entry["noop_rss_kib"].append(nrss)
            entry["ok"] &= ok and nrc == 0
            log(
                f"{key} rep {rep + 1}/{reps} {name:<20} full {secs:7.2f} s  no-op {nsecs:6.2f} s"
                f"  rss {rss // 1024} MiB  {'ok' if ok else f'FAILED rc={rc} files={files} bytes={nbytes}'}"
            )
    for name, entry in results.get(key, {}).items():
        entry["full_median_s"] = median(entry["full_s"])
        entry["noop_median_s"] = median(entry["noop_s"])
        entry["mb_per_s"] = round(count * size / entry["full_median_s"] / 1e6, 1)
        entry["objects_per_s"] = round(count / entry["full_median_s"], 1)


class DelayProxy:
    """tests/peer/delay_proxy.py in front of `upstream_port`: RTT, TLS with a throwaway CA."""

    def __init__(self, work, upstream_port, rtt_ms, rate_mbit=0):
        self.tls_dir = work / "wan-tls"
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "peer" / "delay_proxy.py"),
             "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{upstream_port}",
             "--rtt-ms", str(rtt_ms), "--rate-mbit", str(rate_mbit), "--tls-dir", str(self.tls_dir)],
            stdout=subprocess.PIPE, stderr=open(work / "logs" / "delay-proxy.log", "ab"), text=True,
        )
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            raise RuntimeError(f"delay proxy did not start: {line!r}")
        self.endpoint = "https://" + line.removeprefix("listening on ")
        self.ca = self.tls_dir / "ca.pem"

    def stop(self):
        stop(self.proc)


def bench_wan(args, work, s3s_port, buckets, tool_names, results):
    """The small and large sets through the delay proxy at each RTT, TLS on as users run it."""
    for rtt in args.wan_rtts:
        proxy = DelayProxy(work, s3s_port, rtt, args.wan_rate_mbit)
        try:
            # rclone as the issue measured it on a long link: 16 transfers (and checkers).
            tools = Tools(args, work, proxy.endpoint, ca=proxy.ca,
                          rclone_flags=["--transfers", "16", "--checkers", "16"])
            for ds in ("wan-small", "wan-large"):
                bench_sync(tools, buckets[ds], ds, args.reps, tool_names, results, work,
                           key=f"{ds}-{rtt}ms")
        finally:
            proxy.stop()


def make_local_set(work, name):
    """A local tree with the shape of dataset `name` (the files a LAN client saved), made once."""
    count, size = DATASETS[name]
    root = work / f"local-{name}"
    marker = work / f".local-ready-{name}-{count}-{size}"
    if marker.exists():
        return root
    if root.exists():
        shutil.rmtree(root)
    rng = random.Random(f"sgw-bench-up-{name}")
    for key in dataset_keys(name):
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        if size > (1 << 20):
            block = rng.randbytes(1 << 20)
            with open(path, "wb") as f:
                for i in range(size >> 20):
                    f.write(bytes([i & 0xFF]) + block[1:])
        else:
            path.write_bytes(rng.randbytes(size))
    marker.write_text("ok\n")
    return root


def bench_upload(args, work, s3root, tools, names, results):
    """Upload of a local tree into an empty bucket: the agent's two-way share (one `sync`)
    against `rclone copy` (both connection modes) and `aws s3 sync`, alternating."""
    for ds in ("small", "large"):
        count, size = DATASETS[ds]
        src = make_local_set(work, ds)
        key = f"upload-{ds}"
        for rep in range(args.reps):
            order = names[rep % len(names):] + names[: rep % len(names)]
            for name in order:
                bucket = f"up-{ds}-{name}-{rep}".lower()
                fresh_dir(s3root / bucket)
                logf = work / "logs" / f"{key}-{name}.log"
                if name.startswith("sgw-agent"):
                    # The share is a copy of the tree (the agent keeps .sgw/ in it).
                    share = work / "up-share" / name
                    state = work / "up-state" / name
                    for d in (share, state):
                        if d.exists():
                            shutil.rmtree(d)
                    shutil.copytree(src, share)
                    cfg = tools.agent_config(bucket, share, state,
                                             'mode = "two_way"\nsettle_ms = 100\n')
                    cmd, env = [args.agent, "-c", str(cfg), "sync", "-q"], tools.env
                elif name.startswith("rclone"):
                    flags = ["--disable-http-keep-alives"] if name == "rclone-nokeepalive" else []
                    cmd, env = [args.rclone, "copy", str(src), f"peer:{bucket}", *flags], tools.rclone_env
                else:
                    cmd = [args.aws, "s3", "sync", str(src), f"s3://{bucket}", "--endpoint-url",
                           tools.endpoint, "--no-progress", "--only-show-errors"]
                    env = tools.aws_env
                os.sync()
                secs, rc, rss = timed(cmd, env, logf)
                uploaded = sum(1 for p in (s3root / bucket).rglob("*") if p.is_file())
                ok = rc == 0 and uploaded >= count
                entry = results.setdefault(key, {}).setdefault(
                    name, {"full_s": [], "noop_s": [], "peak_rss_kib": [], "noop_rss_kib": [], "ok": True}
                )
                entry["full_s"].append(round(secs, 3))
                entry["noop_s"].append(0.0)
                entry["peak_rss_kib"].append(rss)
                entry["ok"] &= ok
                log(f"{key} rep {rep + 1}/{args.reps} {name:<20} upload {secs:7.2f} s  rss {rss // 1024} MiB"
                    f"  {'ok' if ok else f'FAILED rc={rc} objects={uploaded}'}")
                shutil.rmtree(s3root / bucket, ignore_errors=True)
        for name, entry in results.get(key, {}).items():
            entry["full_median_s"] = median(entry["full_s"])
            entry["noop_median_s"] = 0.0
            entry["mb_per_s"] = round(count * size / entry["full_median_s"] / 1e6, 1)
            entry["objects_per_s"] = round(count / entry["full_median_s"], 1)


def bench_curl(args, endpoint, bucket, dataset, reps, parallel, keepalive):
    """Raw parallel GETs of the dataset's objects to /dev/null: what the server can serve."""
    count, size = DATASETS[dataset]
    cfg_lines = []
    for key in dataset_keys(dataset):
        cfg_lines.append(f'url = "{endpoint}/{bucket}/{key}"\noutput = "/dev/null"\n')
    cfg = Path(args.work) / f"curl-{dataset}.cfg"
    cfg.write_text("".join(cfg_lines))
    cmd = [
        "curl", "-sS", "--fail", "--aws-sigv4", f"aws:amz:{REGION}:s3",
        # curl 7.88 signs but does not send this header, which S3 servers require.
        "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
        "--user", f"{ACCESS_KEY}:{SECRET_KEY}", "--parallel", "--parallel-max", str(parallel),
        "-K", str(cfg),
    ]
    if not keepalive:
        cmd[1:1] = ["-H", "Connection: close"]
    times = []
    for _ in range(reps):
        secs, rc, _ = timed(cmd, log_path=Path(args.work) / "logs" / "curl.log")
        if rc != 0:
            raise SystemExit(f"curl failed ({rc}); see {args.work}/logs/curl.log")
        times.append(secs)
    m = median(times)
    return {
        "parallel": parallel,
        "keepalive": keepalive,
        "runs_s": [round(t, 3) for t in times],
        "median_s": round(m, 3),
        "mb_per_s": round(count * size / m / 1e6, 1),
        "objects_per_s": round(count / m, 1),
    }


# --- event latency (moto) --------------------------------------------------------------------

IN_CREATE = 0x100
IN_MOVED_TO = 0x80
IN_NONBLOCK = 0o4000


class DirWatch:
    """inotify on one directory: when each name appeared there (rename into it or create)."""

    def __init__(self, path):
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = self.libc.inotify_init1(IN_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        wd = self.libc.inotify_add_watch(self.fd, str(path).encode(), IN_MOVED_TO | IN_CREATE)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        self.seen = {}
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        header = struct.Struct("iIII")
        while not self.stopping:
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if not ready:
                continue
            now = time.monotonic()
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            offset = 0
            with self.cond:
                while offset < len(data):
                    _, mask, _, length = header.unpack_from(data, offset)
                    name = data[offset + header.size: offset + header.size + length].rstrip(b"\0")
                    offset += header.size + length
                    self.seen.setdefault(name.decode(), now)
                self.cond.notify_all()

    def wait_for(self, name, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while name not in self.seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.seen[name]

    def close(self):
        self.stopping = True
        self.thread.join()
        os.close(self.fd)


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def bench_events(args, work, events):
    import peerctl

    logs = work / "logs"
    moto, endpoint = start_moto(args, work)
    agent = None
    watch = None
    try:
        peer = [sys.executable, str(REPO / "tests/peer/peerctl.py"), "--endpoint", endpoint]
        subprocess.run(peer + ["make-bucket", "events"], check=True, stdout=subprocess.DEVNULL)
        wired = json.loads(
            subprocess.run(
                peer + ["wire-events", "events", "--name", "bench"], check=True,
                stdout=subprocess.PIPE,
            ).stdout
        )
        share = work / "events-share"
        state = work / "events-state"
        fresh_dir(share)
        fresh_dir(state)
        cfg = work / "agent-events.toml"
        cfg.write_text(
            f'state_dir = "{state}"\n\n[[share]]\nname = "events"\npath = "{share}"\n'
            f'bucket = "events"\nendpoint = "{endpoint}"\nregion = "{REGION}"\n'
            f'queue_url = "{wired["queue_url"]}"\nallow_http = true\n'
        )
        env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
        agent = subprocess.Popen(
            [args.agent, "-c", str(cfg), "run"], env=env,
            stdout=open(logs / "agent-run.log", "ab"), stderr=subprocess.STDOUT,
        )
        s3 = peerctl.client(endpoint, "s3")

        def put(key, body):
            s3.put_object(Bucket="events", Key=key, Body=body, ChecksumAlgorithm="CRC64NVME")

        # Warm up: the first event creates the folder the watch is put on.
        put("ev/warmup", b"warm")
        deadline = time.monotonic() + 60
        while not (share / "ev" / "warmup").exists():
            if agent.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("agent did not apply the warm-up event; see logs/agent-run.log")
            time.sleep(0.05)
        # Steady state: idle in its long poll.
        time.sleep(2)
        idle_samples = []
        for _ in range(20):
            idle_samples.append(rss_kib(agent.pid))
            time.sleep(0.25)

        watch = DirWatch(share / "ev")
        rng = random.Random(5)
        latencies = []
        misses = 0
        body = rng.randbytes(1024)
        for i in range(events):
            name = f"e{i:05d}"
            put(f"ev/{name}", body)
            sent = time.monotonic()
            seen = watch.wait_for(name, 10.0)
            if seen is None:
                misses += 1
            else:
                latencies.append(max(0.0, seen - sent))
            # Changes arrive at random moments, not in lock-step with the agent.
            time.sleep(rng.uniform(0, 0.03))
        busy_peak = rss_kib(agent.pid, "VmHWM")
        time.sleep(2)
        after_samples = [rss_kib(agent.pid)]
        latencies.sort()
        ms = [round(x * 1000, 1) for x in latencies]
        return {
            "events": events,
            "missed": misses,
            "p50_ms": percentile(ms, 50),
            "p95_ms": percentile(ms, 95),
            "p99_ms": percentile(ms, 99),
            "max_ms": ms[-1] if ms else None,
            "mean_ms": round(statistics.mean(ms), 1) if ms else None,
            "idle_rss_kib": median(idle_samples),
            "idle_rss_max_kib": max(idle_samples),
            "peak_rss_kib": busy_peak,
            "rss_after_kib": after_samples[0],
        }
    finally:
        if watch:
            watch.close()
        stop(agent)
        stop(moto)


# --- memory: 10k vs 100k objects (moto) ----------------------------------------------------


def start_moto(args, work):
    port = free_port()
    proc = subprocess.Popen(
        [args.moto, "-H", "127.0.0.1", "-p", str(port)],
        stdout=open(work / "logs" / "moto.log", "ab"), stderr=subprocess.STDOUT,
    )
    wait_port(port, proc, "moto")
    return proc, f"http://127.0.0.1:{port}"


def bench_memory(args, work, counts):
    """Peak RSS of `sgw-agent sync` into an empty share for each object count, against the
    synthetic bucket (benches/synthetic_s3.rs): s3s-fs walks the whole bucket for every listing
    page and moto serves ~300 objects/s, so neither can hold 100k objects in a run of minutes."""
    out = {}
    env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    for count in counts:
        port = free_port()
        server = subprocess.Popen(
            [args.synthetic_s3, "--objects", str(count), "--size", "1024", "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=open(work / "logs" / "synthetic_s3.log", "ab"),
        )
        try:
            wait_port(port, server, "synthetic_s3")
            dest = work / "dest" / f"mem-{count}"
            state = work / "state" / f"mem-{count}"
            fresh_dir(dest)
            fresh_dir(state)
            cfg = work / f"agent-mem-{count}.toml"
            cfg.write_text(
                f'state_dir = "{state}"\n\n[[share]]\nname = "mem"\npath = "{dest}"\n'
                f'bucket = "synthetic"\nendpoint = "http://127.0.0.1:{port}"\nregion = "{REGION}"\n'
                "allow_http = true\n"
            )
            os.sync()
            cmd = [args.agent, "-c", str(cfg), "sync", "-q"]
            secs, rc, rss = timed(cmd, env, work / "logs" / f"mem-{count}.log")
            files, _ = tree_stats(dest)
            if rc != 0 or files != count:
                raise SystemExit(f"agent sync of {count} objects failed: rc={rc} files={files}")
            nsecs, nrc, nrss = timed(cmd, env, work / "logs" / f"mem-{count}.log")
            out[count] = {"seconds": round(secs, 1), "peak_rss_kib": rss,
                          "noop_seconds": round(nsecs, 1), "noop_peak_rss_kib": nrss}
            log(f"memory: sync of {count} objects in {secs:.1f} s, peak RSS {rss / 1024:.1f} MiB; "
                f"no-op {nsecs:.1f} s, {nrss / 1024:.1f} MiB")
            shutil.rmtree(dest)
        finally:
            stop(server)
    return out


# --- report ---------------------------------------------------------------------------------


def versions(args):
    def out(cmd):
        try:
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
            return r.stdout.decode(errors="replace").strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unknown"

    import importlib.metadata as md

    return {
        "sgw-agent": out([args.agent, "--version"]),
        "git": out(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
        "rclone": out([args.rclone, "version"]),
        "aws": out([args.aws, "--version"]),
        "s3s-fs": out([args.s3s_fs, "--version"]),
        "moto": md.version("moto"),
        "curl": out(["curl", "--version"]),
        "rustc": out(["rustc", "--version"]),
    }


def machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith(("model name", "Model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {
        "arch": platform.machine(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_mib": mem,
        "kernel": platform.release(),
        "os": platform.freedesktop_os_release().get("PRETTY_NAME", "") if hasattr(platform, "freedesktop_os_release") else "",
        "loadavg_start": os.getloadavg()[0],
    }


def fmt(v, unit=""):
    if v is None:
        return "–"
    if isinstance(v, float):
        v = f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"
    return f"{v}{unit}"


def ratio(peer, agent):
    if not peer or not agent:
        return None
    return round(peer / agent, 2)


def markdown(r):
    m = r["machine"]
    v = r["versions"]
    lines = [
        f"Run {r['date']} on {m['cpu']} ({m['arch']}, {m['cores']} cores, {m['mem_mib']} MiB), "
        f"{m['os']}, kernel {m['kernel']}; load average {m['loadavg_start']:.1f} at start, "
        f"{r['loadavg_end']:.1f} at end. {r['reps']} repetitions, tools alternating; medians.",
        "",
        f"Versions: {v['sgw-agent']} ({v['git']}), {v['rclone']}, {v['aws']}, "
        f"{v['s3s-fs']}, moto {v['moto']}, {v['curl'].split(' (')[0]}.",
        "",
    ]
    agent_name = r["agent_headline"]
    wan = [
        (k, f"{'2,000 × 4 KiB' if k.startswith('wan-small') else '4 × 64 MiB'} at "
            f"{k.rsplit('-', 1)[1].removesuffix('ms')} ms round trip, TLS",
         "; through tests/peer/delay_proxy.py (each direction delayed by RTT/2, order kept; TLS "
         "terminated there with a throwaway CA every tool trusts); rclone with --transfers 16 "
         "--checkers 16, aws s3 sync with its default 10 requests")
        for k in sorted((k for k in r["sync"] if k.startswith("wan-")),
                        key=lambda k: (k.startswith("wan-large"), int(k.rsplit("-", 1)[1].removesuffix("ms"))))
    ]
    for ds, title, where in (
        ("small", "10,000 × 4 KiB", ""),
        ("large", "16 × 64 MiB", ""),
        ("upload-small", "upload of 10,000 × 4 KiB into an empty bucket", "; the agent's two-way share "
         "(`sync` uploads what the bucket lacks), `rclone copy` and `aws s3 sync`; the no-op column is unused"),
        ("upload-large", "upload of 16 × 64 MiB into an empty bucket", "; as above"),
        *wan,
        ("small-ext4", "10,000 × 4 KiB onto a fresh journaled ext4",
         "; each run on a newly made ext4 with mkfs.ext4's defaults, journal included, on a loop "
         "device: what an appliance's disk usually has, where every fsync is a journal commit"),
    ):
        res = r["sync"].get(ds)
        if not res:
            continue
        a = res.get(agent_name, {})
        lines += [
            f"**Full sync {title}** (s3s-fs on loopback{where}; ratio = tool time / {agent_name} "
            "time, > 1 means the agent is faster)",
            "",
            "| tool | full sync | MB/s | objects/s | ratio | no-op re-sync | ratio | peak RSS |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, e in res.items():
            ok = "" if e["ok"] else " (FAILED)"
            lines.append(
                f"| {name}{ok} | {fmt(e['full_median_s'], ' s')} | {fmt(e['mb_per_s'])} | "
                f"{fmt(e['objects_per_s'])} | {fmt(ratio(e['full_median_s'], a.get('full_median_s')), '×')} | "
                f"{fmt(e['noop_median_s'], ' s')} | {fmt(ratio(e['noop_median_s'], a.get('noop_median_s')), '×')} | "
                f"{fmt(max(e['peak_rss_kib']) / 1024, ' MiB')} |"
            )
        ceil = r["ceiling"].get(ds)
        if ceil:
            best = max(ceil, key=lambda c: c["mb_per_s"])
            lines.append(
                f"| curl, raw parallel GET to /dev/null (best of {', '.join(str(c['parallel']) for c in ceil)} "
                f"streams{'' if best['keepalive'] else ', Connection: close'}) | {fmt(best['median_s'], ' s')} | "
                f"{fmt(best['mb_per_s'])} | {fmt(best['objects_per_s'])} | | | | |"
            )
            if a.get("mb_per_s"):
                lines.append("")
                same = {c["parallel"]: c for c in ceil}
                text = (
                    f"{agent_name} (its adaptive pool, at most 32 workers by default) reaches "
                    f"{100 * a['mb_per_s'] / best['mb_per_s']:.0f} % of the best raw GET throughput"
                )
                if 4 in same:
                    text += f", {100 * a['mb_per_s'] / same[4]['mb_per_s']:.0f} % of curl with 4 streams"
                a16 = res.get("sgw-agent-16", {})
                if a16.get("mb_per_s") and 16 in same:
                    text += (
                        f"; with 16 workers {100 * a16['mb_per_s'] / same[16]['mb_per_s']:.0f} % of "
                        "curl with 16 streams"
                    )
                lines.append(text + ". Unlike curl it also writes, fsyncs and CRC-checks every byte.")
        lines.append("")
    ev = r.get("events")
    if ev:
        lines += [
            f"**Event → visible** (`sgw-agent run` against moto S3→SNS→SQS; time from the PUT returning "
            f"to the file at its final path, inotify; {ev['events']} events, {ev['missed']} missed)",
            "",
            "| p50 | p95 | p99 | max | mean |",
            "|---:|---:|---:|---:|---:|",
            f"| {fmt(ev['p50_ms'], ' ms')} | {fmt(ev['p95_ms'], ' ms')} | {fmt(ev['p99_ms'], ' ms')} | "
            f"{fmt(ev['max_ms'], ' ms')} | {fmt(ev['mean_ms'], ' ms')} |",
            "",
        ]
    crc = r.get("crc")
    if crc:
        lines += [
            f"**CRC-64 throughput** (`cargo bench --bench crc64`, one core, {crc['buffer_bytes'] >> 20} MiB "
            f"buffer in {crc['chunk_bytes'] >> 10} KiB chunks)",
            "",
            "| kernel | MB/s |",
            "|---|---:|",
        ]
        for k, val in crc["mb_per_s"].items():
            lines.append(f"| {k} | {val:,.0f} |")
        lines.append("")
    mem = r.get("memory")
    if mem:
        labels = {
            "peak_sync_small_set_kib": "peak, `sync` of 10,000 × 4 KiB (s3s-fs)",
            "peak_sync_large_set_kib": "peak, `sync` of 16 × 64 MiB (s3s-fs)",
            "peak_sync_10k_kib": "peak, `sync` of 10,000 × 1 KiB (synthetic bucket)",
            "peak_sync_100k_kib": "peak, `sync` of 100,000 × 1 KiB (synthetic bucket)",
            "peak_noop_100k_kib": "peak, no-op re-sync of 100,000 (synthetic bucket)",
            "steady_longpoll_kib": "steady, `run` idle in its long poll (moto)",
            "peak_run_events_kib": "peak, `run` over the event-latency test (moto)",
        }
        lines += [
            "**Agent memory** (resident set; peaks from GNU time, steady from /proc while idle)",
            "",
            "| case | RSS |",
            "|---|---:|",
        ]
        for k, label in labels.items():
            if k in mem:
                lines.append(f"| {label} | {mem[k] / 1024:.1f} MiB |")
        if mem.get("peak_sync_100k_kib") and mem.get("peak_sync_10k_kib"):
            lines.append(
                f"| 100k / 10k peak ratio | {mem['peak_sync_100k_kib'] / mem['peak_sync_10k_kib']:.2f} |"
            )
        runs = r.get("memory_runs", {})
        if runs:
            lines.append("")
            lines.append(
                "Synthetic-bucket syncs (the server is never the bottleneck): "
                + "; ".join(
                    f"{int(n):,} objects in {v['seconds']} s ({int(n) / v['seconds']:,.0f} objects/s), "
                    f"no-op {v['noop_seconds']} s"
                    for n, v in runs.items()
                )
                + "."
            )
        lines.append("")
    targets = r.get("targets")
    if targets:
        lines += ["**Targets (issue 5)**", "", "| target | measured | met |", "|---|---|:-:|"]
        for t in targets:
            lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |")
        lines.append("")
    return "\n".join(lines)


def judge(r):
    out = []
    agent = r["agent_headline"]

    def add(target, measured, met):
        out.append({"target": target, "measured": measured, "met": bool(met)})

    for ds, need, label in (("small", 1.5, "small objects"), ("large", 1.0, "large objects")):
        res = r["sync"].get(ds, {})
        a = res.get(agent, {}).get("full_median_s")
        rclones = [e["full_median_s"] for n, e in res.items() if n.startswith("rclone")]
        if a and rclones:
            best = min(rclones)
            x = best / a
            add(f"full sync ≥ {need}× faster than the fastest rclone, {label}", f"{x:.2f}×", x >= need)
    ceil = r["ceiling"].get("large")
    a = r["sync"].get("large", {}).get(agent, {}).get("mb_per_s")
    if ceil and a:
        best = max(c["mb_per_s"] for c in ceil)
        add("≥ 90 % of raw GET throughput, large objects", f"{100 * a / best:.0f} %", a >= 0.9 * best)
        a16 = r["sync"].get("large", {}).get("sgw-agent-16", {}).get("mb_per_s")
        c16 = next((c["mb_per_s"] for c in ceil if c["parallel"] == 16), None)
        if a16 and c16:
            add("the same with 16 workers against 16 curl streams", f"{100 * a16 / c16:.0f} %",
                a16 >= 0.9 * c16)
    ev = r.get("events")
    if ev and ev["p50_ms"] is not None:
        add("event→visible p50 ≤ 100 ms", f"{ev['p50_ms']} ms", ev["p50_ms"] <= 100 and not ev["missed"])
        add("event→visible p99 ≤ 1 s", f"{ev['p99_ms']} ms", ev["p99_ms"] <= 1000 and not ev["missed"])
    crc = r.get("crc")
    if crc:
        low = min(v for k, v in crc["mb_per_s"].items() if "(agent)" in k)
        add("CRC-64 ≥ 3 GB/s per core (x86_64)", f"{low / 1000:.1f} GB/s", low >= 3000)
    mem = r.get("memory", {})
    peaks = [v for k, v in mem.items() if k.startswith("peak") and k.endswith("_kib")]
    if peaks:
        add("agent peak RSS ≤ 16 MiB", f"{max(peaks) / 1024:.1f} MiB", max(peaks) <= 16 * 1024)
    if mem.get("peak_sync_100k_kib") and mem.get("peak_sync_10k_kib"):
        x = mem["peak_sync_100k_kib"] / mem["peak_sync_10k_kib"]
        add("peak RSS 100k / 10k ≤ 1.2", f"{x:.2f}", x <= 1.2)
    return out


# --- main -----------------------------------------------------------------------------------


def parse_variant(text):
    """NAME:item;item… where an item is a line of agent config, env=K=V, or bin=PATH (another
    agent binary, e.g. the build of main before these fixes)."""
    name, _, rest = text.partition(":")
    extra = ""
    env = {}
    binary = None
    for item in filter(None, rest.split(";")):
        if item.startswith("env="):
            k, _, v = item[4:].partition("=")
            env[k] = v
        elif item.startswith("bin="):
            binary = item[4:]
        else:
            extra += item + "\n"
    return name, extra, env, binary


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--agent", required=True)
    p.add_argument("--s3s-fs", required=True)
    p.add_argument("--rclone", default="rclone")
    p.add_argument("--aws", required=True)
    p.add_argument("--moto", required=True)
    p.add_argument("--synthetic-s3", help="benches/synthetic_s3 executable (memory section)")
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True, help="directory for latest.json and latest.md")
    p.add_argument("--crc-json", help="output of `cargo bench --bench crc64 -- --json`")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--events", type=int, default=500)
    p.add_argument("--memory-counts", type=lambda t: tuple(int(x) for x in t.split(",")),
                   default=(10_000, 100_000), help="two object counts for the RSS comparison")
    p.add_argument("--only", default="small,large,ceiling,ext4,memory,events,wan,upload",
                   help="comma list of sections: small, large, ceiling, ext4, memory, events, wan, upload")
    p.add_argument("--wan-rtts", type=lambda t: tuple(int(x) for x in t.split(",")),
                   default=(0, 30, 100), help="round trips (ms) of the wan section")
    p.add_argument("--wan-rate-mbit", type=float, default=0.0,
                   help="cap the wan section's link (each direction), 0 = uncapped")
    p.add_argument("--tools", default="sgw-agent,rclone,rclone-nokeepalive,aws")
    p.add_argument("--agent-variant", action="append", dest="agent_variants_raw", default=[],
                   help="extra agent variant, e.g. 'sgw-agent-c16:download_concurrency = 16'")
    args = p.parse_args()
    args.agent_variants = [("sgw-agent", "", {}, None)] + [parse_variant(v) for v in args.agent_variants_raw]
    sections = set(args.only.split(","))
    tool_names = args.tools.split(",") + [v[0] for v in args.agent_variants[1:]]

    work = Path(args.work).resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "versions": versions(args),
        "reps": args.reps,
        "agent_headline": "sgw-agent",
        "sync": {},
        "ceiling": {},
        "memory": {},
    }
    if args.crc_json:
        result["crc"] = json.loads(Path(args.crc_json).read_text())

    # Trees of an earlier run are deleted at the end, with this run's (see fresh_dir).
    if (work / "trash").exists():
        (work / "trash").rename(work / f"trash-{time.monotonic_ns()}")

    root = work / "s3root"
    root.mkdir(parents=True, exist_ok=True)
    needed = [d for d in ("small", "large") if d in sections or "ceiling" in sections]
    if "ext4" in sections:
        needed.append("small")
    if "wan" in sections:
        needed += ["wan-small", "wan-large"]
    buckets = {d: make_dataset(root, d) for d in dict.fromkeys(needed)}

    s3s = None
    try:
        if buckets or "upload" in sections:
            port = free_port()
            endpoint = f"http://127.0.0.1:{port}"
            s3s = subprocess.Popen(
                [args.s3s_fs, "--host", "127.0.0.1", "--port", str(port),
                 "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY, str(root)],
                stdout=open(work / "logs" / "s3s-fs.log", "ab"), stderr=subprocess.STDOUT,
            )
            wait_port(port, s3s, "s3s-fs")
            tools = Tools(args, work, endpoint)
            if "wan" in sections:
                bench_wan(args, work, port, buckets, tool_names, result["sync"])
            if "upload" in sections:
                names = [n for n in ("sgw-agent", "rclone", "rclone-nokeepalive", "aws") if n in tool_names]
                bench_upload(args, work, root, tools, names, result["sync"])
            for ds in ("small", "large"):
                if ds in sections:
                    bench_sync(tools, buckets[ds], ds, args.reps, tool_names, result["sync"], work)
                if "ceiling" in sections:
                    runs = []
                    for par in (4, 16):
                        runs.append(bench_curl(args, endpoint, buckets[ds], ds, args.reps, par,
                                               keepalive=(ds == "large")))
                    result["ceiling"][ds] = runs
                    log(f"curl ceiling {ds}: " + ", ".join(f"{c['parallel']} streams {c['mb_per_s']} MB/s" for c in runs))
            if "ext4" in sections:
                if FreshExt4.available():
                    # The agent (and its variants) against the fastest rclone; the slow
                    # configurations add nothing here but minutes.
                    ext4_names = [n for n in tool_names if n.startswith("sgw-agent")]
                    ext4_names.append("rclone-nokeepalive")
                    fs = FreshExt4(work)
                    try:
                        bench_sync(tools, buckets["small"], "small", args.reps, ext4_names,
                                   result["sync"], work, fs=fs, key="small-ext4")
                    finally:
                        fs.close()
                else:
                    log("ext4 section skipped: needs root, mkfs.ext4, losetup and loop devices")
    finally:
        stop(s3s)

    if "memory" in sections:
        small_n, large_n = args.memory_counts
        mem = bench_memory(args, work, (small_n, large_n))
        result["memory_runs"] = {str(k): v for k, v in mem.items()}
        result["memory"]["peak_sync_10k_kib"] = mem[small_n]["peak_rss_kib"]
        result["memory"]["peak_sync_100k_kib"] = mem[large_n]["peak_rss_kib"]
        result["memory"]["peak_noop_100k_kib"] = mem[large_n]["noop_peak_rss_kib"]

    if "events" in sections:
        ev = bench_events(args, work, args.events)
        result["events"] = ev
        result["memory"]["steady_longpoll_kib"] = ev["idle_rss_kib"]
        result["memory"]["peak_run_events_kib"] = ev["peak_rss_kib"]
        log(f"events: p50 {ev['p50_ms']} ms p95 {ev['p95_ms']} ms p99 {ev['p99_ms']} ms, missed {ev['missed']}")

    for ds, res in result["sync"].items():
        a = res.get("sgw-agent")
        if a and a.get("peak_rss_kib"):
            result["memory"].setdefault(f"peak_sync_{ds}_set_kib", max(a["peak_rss_kib"]))

    for old in work.glob("trash*"):
        shutil.rmtree(old, ignore_errors=True)
    result["loadavg_end"] = os.getloadavg()[0]
    result["targets"] = judge(result)
    (out_dir / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "latest.md").write_text(markdown(result) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
