"""A tiny network tool run inside test namespaces (`ip netns exec NS python nettool.py ...`).

serve PORT [PORT...]        TCP servers that answer each connection with "<peer ip> <name>\\n"
metadata PORT IP=ID ...     an HTTP server standing in for the CLC's metadata: instance-id by source address
get URL                     print the body of an HTTP GET (or ERROR <reason>)
connect HOST PORT TIMEOUT [SOURCE]   print the server's answer, or REFUSED / TIMEOUT / ERROR <reason>
"""

from __future__ import annotations

import http.server
import socket
import socketserver
import sys
import threading
import urllib.request


def serve(ports: list[int], name: str) -> None:
    def one(port: int) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", port))
        listener.listen(64)
        while True:
            conn, peer = listener.accept()
            with conn:
                conn.sendall(f"{peer[0]} {name}\n".encode())

    for port in ports:
        threading.Thread(target=one, args=(port,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def metadata(port: int, table: dict[str, str]) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            instance = table.get(self.client_address[0])
            if self.path != "/latest/meta-data/instance-id" or instance is None:
                self.send_error(404)
                return
            body = instance.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = socketserver.ThreadingTCPServer(("0.0.0.0", port), Handler)
    print("ready", flush=True)
    server.serve_forever()


def connect(host: str, port: int, timeout: float, source: str = "") -> str:
    try:
        with socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        ) as conn:
            conn.settimeout(timeout)
            return conn.recv(200).decode(errors="replace").splitlines()[0].strip()
    except ConnectionRefusedError:
        return "REFUSED"
    except TimeoutError:
        return "TIMEOUT"
    except OSError as err:
        return f"ERROR {err.strerror or err}"


def get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.read(4096).decode()
    except OSError as err:
        return f"ERROR {err}"


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "serve":
        serve([int(p) for p in sys.argv[3:]], sys.argv[2])
    elif command == "metadata":
        metadata(int(sys.argv[2]), dict(item.split("=", 1) for item in sys.argv[3:]))
    elif command == "get":
        print(get(sys.argv[2]))
    elif command == "connect":
        print(connect(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), *sys.argv[5:6]))
