#!/usr/bin/env python3
"""A WAN in a box: a TCP proxy that delays each direction by RTT/2 (order kept), optionally
caps the bandwidth of the whole link, terminates TLS, and resets connections on purpose.

Used by the benchmarks (benches/driver.py, section `wan`) and by tests/wan_proxy.rs:

    delay_proxy.py --listen 127.0.0.1:0 --upstream 127.0.0.1:9000 --rtt-ms 30 \
        [--rate-mbit 100] [--tls-dir DIR] [--reset-every N [--max-resets M]]

Prints `listening on HOST:PORT` once it accepts connections. With --tls-dir it creates (once)
DIR/ca.pem (a throwaway CA), DIR/cert.pem and DIR/key.pem (a certificate for 127.0.0.1 and
localhost signed by it) and speaks TLS to clients, plain TCP to the upstream: the client
trusts DIR/ca.pem. With --reset-every N, every Nth connection is reset (RST) after it has
carried a few KiB of response, as a flaky link does.

Each chunk read is stamped and released RTT/2 later, in order, so a request/response costs
one round trip and a TCP handshake to the proxy costs nothing extra (it is local); the
upstream connection is opened at once. Quick ACKs are re-armed on every socket after each
read, so a server's delayed ACKs do not add stalls the real link would not have.
"""

import argparse
import asyncio
import datetime
import ipaddress
import itertools
import socket
import ssl
import struct
import sys
from pathlib import Path

CHUNK = 64 * 1024


def make_certs(directory: Path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_pem, cert_pem, key_pem = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    if ca_pem.exists() and cert_pem.exists() and key_pem.exists():
        return cert_pem, key_pem
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sgw test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return cert_pem, key_pem


class Link:
    """One direction's shared bandwidth (a token bucket), or none."""

    def __init__(self, rate_mbit):
        self.rate = rate_mbit * 1e6 / 8 if rate_mbit else None
        self.free_at = 0.0

    def transmit_time(self, nbytes, now):
        """When a chunk handed over at `now` has left the link."""
        if not self.rate:
            return now
        start = max(now, self.free_at)
        self.free_at = start + nbytes / self.rate
        return self.free_at


def quickack(writer):
    sock = writer.get_extra_info("socket")
    if sock is not None and hasattr(socket, "TCP_QUICKACK"):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass


async def pump(reader, writer, delay, link, reset_after=None, on_reset=None):
    """Copy reader -> writer, each chunk released `delay` seconds after it arrived (plus the
    link's serialisation time), in order."""
    queue = asyncio.Queue()
    loop = asyncio.get_running_loop()

    async def receive():
        while True:
            data = await reader.read(CHUNK)
            quickack(writer)
            now = loop.time()
            if not data:
                await queue.put((now + delay, None))
                return
            await queue.put((link.transmit_time(len(data), now) + delay, data))

    async def send():
        carried = 0
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                try:
                    if writer.can_write_eof():
                        writer.write_eof()
                except (OSError, RuntimeError):
                    pass
                return
            if reset_after is not None and carried + len(data) >= reset_after:
                # Send only up to the reset point: the client sees a body cut off mid-way.
                writer.write(data[: reset_after - carried])
                await writer.drain()
                await asyncio.sleep(0.01)
                on_reset()
                return
            writer.write(data)
            carried += len(data)
            await writer.drain()

    receiver = asyncio.ensure_future(receive())
    try:
        await send()
    finally:
        receiver.cancel()


def hard_reset(writer):
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


async def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--upstream", required=True)
    p.add_argument("--rtt-ms", type=float, default=0.0)
    p.add_argument("--rate-mbit", type=float, default=0.0, help="cap each direction (0 = none)")
    p.add_argument("--tls-dir", type=Path, help="terminate TLS with a throwaway CA kept here")
    p.add_argument("--reset-every", type=int, default=0, help="reset every Nth connection")
    p.add_argument("--reset-after-bytes", type=int, default=4096)
    p.add_argument("--max-resets", type=int, default=0, help="stop resetting after this many (0 = never stop)")
    args = p.parse_args()

    host, port = args.listen.rsplit(":", 1)
    up_host, up_port = args.upstream.rsplit(":", 1)
    delay = args.rtt_ms / 2000.0
    down, up = Link(args.rate_mbit), Link(args.rate_mbit)
    counter = itertools.count(1)
    resets_done = [0]
    tls = None
    if args.tls_dir:
        cert, key = make_certs(args.tls_dir)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)

    async def handle(client_reader, client_writer):
        n = next(counter)
        try:
            up_reader, up_writer = await asyncio.open_connection(up_host, int(up_port))
        except OSError:
            client_writer.close()
            return
        for w in (client_writer, up_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        resetting = args.reset_every and n % args.reset_every == 0
        if resetting and args.max_resets:
            resets_done[0] += 1
            resetting = resets_done[0] <= args.max_resets

        def reset():
            hard_reset(client_writer)
            hard_reset(up_writer)

        tasks = [
            asyncio.ensure_future(pump(client_reader, up_writer, delay, up)),
            asyncio.ensure_future(
                pump(
                    up_reader,
                    client_writer,
                    delay,
                    down,
                    reset_after=args.reset_after_bytes if resetting else None,
                    on_reset=reset,
                )
            ),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.ALL_COMPLETED)
        except Exception:
            pass
        finally:
            for t in tasks:
                t.cancel()
            for w in (client_writer, up_writer):
                try:
                    w.close()
                except Exception:
                    pass

    server = await asyncio.start_server(handle, host, int(port), ssl=tls, backlog=1024)
    bound = server.sockets[0].getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
