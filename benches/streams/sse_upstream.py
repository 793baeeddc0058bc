"""An SSE upstream for benches/streams: every request gets an endless
text/event-stream, one `data: tick N` event every 100 ms (chunked)."""
import socket
import sys
import threading
import time


def serve(conn):
    try:
        head = b""
        while b"\r\n\r\n" not in head:
            b = conn.recv(4096)
            if not b:
                return
            head += b
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        n = 0
        while True:
            ev = b"data: tick %d\n\n" % n
            conn.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
            n += 1
            time.sleep(0.1)
    except OSError:
        pass
    finally:
        conn.close()


def main():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen(128)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


main()
