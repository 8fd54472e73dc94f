"""A stand-in model API on 127.0.0.1 for driving the real Claude Code and Codex
offline: the Anthropic Messages API (/v1/messages, streamed or not) and the
OpenAI Responses API (/v1/responses, streamed). It plays a fixed script:

1. When the request offers the iai-mcp recall tool and has not used it yet,
   it calls the tool with the cue given at start.
2. Otherwise it answers with a short text that carries the reply canary.

Every request body is appended to a JSONL log, so the test can see exactly
what the host sent the model: the session-start context, and the tool result
inline (not a "saved to a file" preview). Loopback only; it stops by itself
after a bounded number of requests or seconds.
"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG = None
CUE = "canary"
REPLY = "stand-in model reply"
MAX_REQUESTS = 200
served = 0


def find_tool(tools, suffix):
    """The tool's name, and its namespace where the host groups tools (Codex)."""
    for t in tools or []:
        if t.get("type") == "namespace":
            for inner in t.get("tools") or []:
                if (inner.get("name") or "").endswith(suffix):
                    return inner["name"], t.get("name")
        name = t.get("name") or (t.get("function") or {}).get("name") or ""
        if name.endswith(suffix):
            return name, None
    return None


def used_tool(messages_text):
    return "memory_recall" in messages_text and ("tool_result" in messages_text or "function_call_output" in messages_text)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def body(self):
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return {}

    def record(self, req):
        global served
        served += 1
        with open(LOG, "a") as f:
            f.write(json.dumps({"path": self.path, "body": req}) + "\n")

    def send_json(self, obj, code=200):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_sse(self, events):
        data = "".join(f"event: {name}\ndata: {json.dumps(obj)}\n\n" for name, obj in events).encode()
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.send_json({"data": [], "object": "list"})

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_POST(self):
        req = self.body()
        self.record(req)
        path = self.path.split("?")[0]
        if path.endswith("/count_tokens"):
            return self.send_json({"input_tokens": len(json.dumps(req)) // 4})
        if path.endswith("/messages"):
            return self.anthropic(req)
        if path.endswith("/responses"):
            return self.openai(req)
        self.send_json({"error": {"type": "not_found", "message": self.path}}, 404)

    # -- Anthropic Messages API
    def anthropic(self, req):
        tool = find_tool(req.get("tools"), "memory_recall")
        text = json.dumps(req.get("messages", []))
        msg_id = f"msg_standin_{served}"
        model = req.get("model", "claude-standin")
        usage = {"input_tokens": 10, "output_tokens": 5}
        if tool and not used_tool(text):
            block = {"type": "tool_use", "id": f"toolu_standin_{served}", "name": tool[0], "input": {"cue": CUE, "token_budget": 10000}}
            stop = "tool_use"
        else:
            block = {"type": "text", "text": f"{REPLY}."}
            stop = "end_turn"
        if not req.get("stream"):
            return self.send_json({"id": msg_id, "type": "message", "role": "assistant", "model": model,
                                   "content": [block], "stop_reason": stop, "stop_sequence": None, "usage": usage})
        start = dict(block)
        if block["type"] == "tool_use":
            start["input"] = {}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        else:
            start["text"] = ""
            delta = {"type": "text_delta", "text": block["text"]}
        self.send_sse([
            ("message_start", {"type": "message_start", "message": {"id": msg_id, "type": "message", "role": "assistant",
                               "model": model, "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}}),
            ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": start}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                               "usage": {"output_tokens": 5}}),
            ("message_stop", {"type": "message_stop"}),
        ])

    # -- OpenAI Responses API (streamed)
    def openai(self, req):
        tool = find_tool(req.get("tools"), "memory_recall")
        text = json.dumps(req.get("input", []))
        rid = f"resp_standin_{served}"
        if tool and not used_tool(text):
            item = {"type": "function_call", "id": f"fc_standin_{served}", "call_id": f"call_standin_{served}",
                    "name": tool[0], "arguments": json.dumps({"cue": CUE, "token_budget": 10000}), "status": "completed"}
            if tool[1]:
                item["namespace"] = tool[1]
        else:
            item = {"type": "message", "id": f"msg_standin_{served}", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": f"{REPLY}.", "annotations": []}]}
        base = {"id": rid, "object": "response", "created_at": int(time.time()), "model": req.get("model", "standin"),
                "status": "in_progress", "output": []}
        done = dict(base, status="completed", output=[item],
                    usage={"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 5,
                           "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 15})
        events = [("response.created", {"type": "response.created", "response": base}),
                  ("response.output_item.added", {"type": "response.output_item.added", "output_index": 0, "item": item})]
        if item["type"] == "message":
            events.append(("response.output_text.delta", {"type": "response.output_text.delta", "item_id": item["id"],
                                                          "output_index": 0, "content_index": 0, "delta": item["content"][0]["text"]}))
        events += [("response.output_item.done", {"type": "response.output_item.done", "output_index": 0, "item": item}),
                   ("response.completed", {"type": "response.completed", "response": done})]
        self.send_sse(events)


def main():
    global LOG, CUE, REPLY
    port_file, LOG, CUE, REPLY = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(port_file, "w") as f:
        f.write(str(server.server_address[1]))
    deadline = time.time() + float(sys.argv[5] if len(sys.argv) > 5 else 600)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    while time.time() < deadline and served < MAX_REQUESTS:
        time.sleep(0.2)
    server.shutdown()


if __name__ == "__main__":
    main()
