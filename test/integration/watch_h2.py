"""A raw gRPC Watch stream over a hand-written HTTP/2 connection (tests only).

Why not grpcio: the watch tests need (1) a client that really stops reading,
so that the server's HTTP/2 flow-control window closes and its send backlog
for that stream has to grow (grpcio reads and buffers on its own), and (2) a
reader cheap enough that one Python process can take millions of small
WatchResponses from 100 streams (grpcio costs tens of microseconds per
streamed message and per thread).

One WatchConnection = one TCP connection to 127.0.0.1 carrying one gRPC call
/etcdserverpb.Watch/Watch on HTTP/2 stream 1.  Requests are etcdserverpb
WatchRequest messages; responses come back as the serialized bytes of each
WatchResponse (the caller parses them, or not).  Only what a gRPC client
needs is implemented: the preface, SETTINGS (+ACK), HEADERS (HPACK literals,
no Huffman, nothing indexed), DATA, PING ACK and WINDOW_UPDATE.  The server's
response headers are not decoded; the end of the call (trailers, RST_STREAM,
GOAWAY, EOF) is reported as `closed` with a reason.
"""

import selectors
import socket
import struct
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
FLAG_END_STREAM, FLAG_ACK, FLAG_END_HEADERS, FLAG_PADDED = 0x1, 0x1, 0x4, 0x8
SETTINGS_ENABLE_PUSH, SETTINGS_INITIAL_WINDOW_SIZE = 0x2, 0x4
DEFAULT_WINDOW = 65535
BIG_WINDOW = (1 << 31) - 1
WATCH_PATH = "/etcdserverpb.Watch/Watch"


def _frame(ftype, flags, stream_id, payload=b""):
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", ftype, flags,
                                                             stream_id) + payload


def _hpack_literal(name, value):
    """Literal header field without indexing, new name, no Huffman (RFC 7541 6.2.2)."""
    name, value = name.encode(), value.encode()
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def grpc_message(payload):
    """A gRPC length-prefixed message (not compressed)."""
    return b"\x00" + struct.pack(">I", len(payload)) + payload


class WatchConnection:
    """One Watch call on its own HTTP/2 connection.

    window: the stream's receive window we announce (SETTINGS_INITIAL_WINDOW_SIZE).
    A reading connection announces the largest window and returns what it
    consumes with WINDOW_UPDATEs; a stalled one (stop_reading()) announces
    `window` and never returns anything, so the server can send at most that
    many bytes of DATA before its flow control stops it."""

    def __init__(self, host, port, window=BIG_WINDOW, timeout=10.0, label=""):
        self.label = label or "%s:%d" % (host, port)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.window = window
        self.closed = None            # reason, once the call or connection ended
        self.reading = True
        self.messages_received = 0
        self.data_bytes = 0           # DATA payload received on the stream
        self._inbuf = bytearray()     # undecoded frames
        self._msgbuf = bytearray()    # DATA payload not yet split into messages
        self._unacked = 0             # consumed DATA not yet given back
        out = PREFACE + _frame(SETTINGS, 0, 0, struct.pack(
            ">HIHI", SETTINGS_ENABLE_PUSH, 0, SETTINGS_INITIAL_WINDOW_SIZE, window))
        if window > DEFAULT_WINDOW:
            out += _frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", window - DEFAULT_WINDOW))
        headers = b"".join(_hpack_literal(n, v) for n, v in (
            (":method", "POST"), (":scheme", "http"), (":path", WATCH_PATH),
            (":authority", "%s:%d" % (host, port)), ("content-type", "application/grpc"),
            ("te", "trailers")))
        out += _frame(HEADERS, FLAG_END_HEADERS, 1, headers)
        self.sock.sendall(out)
        self.sock.setblocking(False)

    def fileno(self):
        return self.sock.fileno()

    def send(self, request):
        """Sends one WatchRequest (a protobuf message or its bytes)."""
        payload = request if isinstance(request, (bytes, bytearray)) else \
            request.SerializeToString()
        self._sendall(_frame(DATA, 0, 1, grpc_message(payload)))

    def _sendall(self, data):
        self.sock.setblocking(True)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.setblocking(False)

    def stop_reading(self):
        """From now on nothing more is read from the socket (see the class doc)."""
        self.reading = False

    def resume_reading(self, open_window=True):
        """Reads again.  open_window: also open the flow-control windows to
        their largest (else they stay as announced, and are given back as
        data is consumed, so stop_reading() stalls the server again)."""
        self.reading = True
        if open_window and self.window < BIG_WINDOW:
            # a SETTINGS change of the initial window applies to open streams too
            self._sendall(_frame(SETTINGS, 0, 0, struct.pack(
                ">HI", SETTINGS_INITIAL_WINDOW_SIZE, BIG_WINDOW)) +
                _frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", BIG_WINDOW - DEFAULT_WINDOW)))
            self.window = BIG_WINDOW
            self._unacked = 0

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def read_available(self, max_bytes=1 << 20):
        """Reads what the socket has (non-blocking) and returns the complete
        WatchResponse payloads (bytes) it carried."""
        try:
            data = self.sock.recv(max_bytes)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError as exc:
            self.closed = self.closed or "connection error: %s" % exc
            return []
        if not data:
            self.closed = self.closed or "connection closed by the server"
            return []
        return self.feed(data)

    def feed(self, data):
        self._inbuf += data
        buf, pos, end = self._inbuf, 0, len(self._inbuf)
        out = b""
        got_data = False
        while end - pos >= 9:
            length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
            if end - pos < 9 + length:
                break
            ftype, flags = buf[pos + 3], buf[pos + 4]
            stream_id = struct.unpack_from(">I", buf, pos + 5)[0] & 0x7FFFFFFF
            start = pos + 9
            pos = start + length
            if ftype == DATA:
                self._unacked += length
                if flags & FLAG_PADDED:
                    pad = buf[start]
                    self._msgbuf += buf[start + 1:pos - pad]
                else:
                    self._msgbuf += buf[start:pos]
                got_data = True
                if flags & FLAG_END_STREAM:
                    self.closed = self.closed or "the server ended the call (END_STREAM on DATA)"
            elif ftype == HEADERS:
                if flags & FLAG_END_STREAM:
                    self.closed = self.closed or "the server ended the call (trailers)"
            elif ftype == SETTINGS:
                if not flags & FLAG_ACK:
                    out += _frame(SETTINGS, FLAG_ACK, 0)
            elif ftype == PING:
                if not flags & FLAG_ACK:
                    out += _frame(PING, FLAG_ACK, 0, bytes(buf[start:pos]))
            elif ftype == RST_STREAM and stream_id == 1:
                self.closed = self.closed or "RST_STREAM error code %d" % struct.unpack_from(
                    ">I", buf, start)[0]
            elif ftype == GOAWAY:
                last, code = struct.unpack_from(">II", buf, start)
                if last & 0x7FFFFFFF < 1 or code != 0:
                    self.closed = self.closed or "GOAWAY error code %d: %r" % (
                        code, bytes(buf[start + 8:pos]))
        del buf[:pos]
        if self.reading and self._unacked > self.window // 4:
            inc = struct.pack(">I", self._unacked)
            out += _frame(WINDOW_UPDATE, 0, 0, inc) + _frame(WINDOW_UPDATE, 0, 1, inc)
            self._unacked = 0
        if out:
            self._sendall(out)
        if not got_data:
            return []
        messages = []
        mbuf, mpos, mend = self._msgbuf, 0, len(self._msgbuf)
        while mend - mpos >= 5:
            mlen = struct.unpack_from(">I", mbuf, mpos + 1)[0]
            if mend - mpos < 5 + mlen:
                break
            messages.append(bytes(mbuf[mpos + 5:mpos + 5 + mlen]))
            mpos += 5 + mlen
        del mbuf[:mpos]
        self.messages_received += len(messages)
        self.data_bytes += mpos
        return messages


def pump(connections, handler, until, deadline, poll=0.05):
    """Reads every reading connection and calls handler(connection, payload)
    for each WatchResponse until until() is true (checked at least every
    `poll` s) or time.monotonic() passes `deadline`.  Returns until()."""
    sel = selectors.DefaultSelector()
    registered = set()
    try:
        while True:
            for conn in connections:
                wanted = conn.reading and not conn.closed
                if wanted and conn not in registered:
                    sel.register(conn.sock, selectors.EVENT_READ, conn)
                    registered.add(conn)
                elif not wanted and conn in registered:
                    sel.unregister(conn.sock)
                    registered.discard(conn)
            if until():
                return True
            if time.monotonic() > deadline:
                return until()
            if not registered:
                time.sleep(poll)
                continue
            for key, _ in sel.select(poll):
                conn = key.data
                for payload in conn.read_available():
                    handler(conn, payload)
    finally:
        sel.close()
