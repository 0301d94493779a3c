#!/usr/bin/python3
"""run_cell.py: runs one cell on a Jupyter server through its HTTP API and the kernel protocol, the way a
notebook page does, and prints the cell's stdout. It owns nothing but this one request/response; the
server, its token and its kernel's lifetime belong to the caller (tests/jupyter.rs).

    run_cell.py URL TOKEN CODE

Starts a kernel (POST /api/kernels), sends an execute_request over the websocket
/api/kernels/<id>/channels (Jupyter messaging protocol 5.x), collects `stream` output until the kernel
reports idle, deletes the kernel, prints the output. Uses only Debian's python3 and python3-websocket.
Exits 1 with one line on stderr when the server, the kernel or the cell fails.
"""

import json
import sys
import urllib.request
import uuid

import websocket


def api(base, token, method, path):
    req = urllib.request.Request(
        f"{base}{path}", method=method, headers={"Authorization": f"token {token}"}, data=b"" if method == "POST" else None
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        body = r.read()
        return json.loads(body) if body else None


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: run_cell.py URL TOKEN CODE")
    base, token, code = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
    kernel = api(base, token, "POST", "/api/kernels")
    kid = kernel["id"]
    try:
        ws = websocket.create_connection(
            f"{base.replace('http', 'ws', 1)}/api/kernels/{kid}/channels?token={token}", timeout=60
        )
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
        }))
        out = []
        while True:
            m = json.loads(ws.recv())
            if m.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            t, c = m["msg_type"], m["content"]
            if t == "stream":
                out.append(c["text"])
            elif t == "error":
                sys.exit(f"the cell failed: {c['ename']}: {c['evalue']}")
            elif t == "status" and c["execution_state"] == "idle":
                break
        ws.close()
    finally:
        api(base, token, "DELETE", f"/api/kernels/{kid}")
    sys.stdout.write("".join(out))


if __name__ == "__main__":
    main()
