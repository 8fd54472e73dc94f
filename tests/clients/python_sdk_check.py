"""Drives the built `iai-mcp mcp` with the official Python MCP SDK (a client
nobody here wrote), in both lifecycles: the legacy `initialize` handshake and
the 2026-07-28 `server/discover` path.

Usage: python python_sdk_check.py /path/to/iai-mcp
"""

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile

from mcp import Client, StdioServerParameters

BIN = sys.argv[1]
results = {"passed": 0, "failed": 0}


def check(name, cond, detail=""):
    if cond:
        results["passed"] += 1
        print(f"ok   {name}")
    else:
        results["failed"] += 1
        print(f"FAIL {name} {detail}")


async def session(home, mode, expected_version):
    params = StdioServerParameters(command=BIN, args=["mcp"], env={"IAI_MCP_HOME": home})
    async with Client(params, mode=mode) as c:
        check(f"[{mode}] negotiated {expected_version}", c.protocol_version == expected_version, c.protocol_version)
        tools = (await c.list_tools()).tools
        names = sorted(t.name for t in tools)
        check(f"[{mode}] seven memory tools", len(names) == 7 and "memory_recall" in names, names)

        cap = await c.call_tool("memory_capture", {"text": f"python sdk canary {mode} lives in Oslo"})
        sc = cap.structured_content or {}
        check(f"[{mode}] capture inserted", not cap.is_error and sc.get("status") == "inserted", sc)
        rec = await c.call_tool("memory_recall", {"cue": f"canary {mode} Oslo"})
        hits = (rec.structured_content or {}).get("memories", [])
        check(f"[{mode}] recall finds it", bool(hits) and hits[0].get("id") == sc.get("id"), hits)
        gone = await c.call_tool("memory_forget", {"id": sc.get("id", "")})
        check(f"[{mode}] forget", (gone.structured_content or {}).get("forgotten") is True, gone)
        again = await c.call_tool("memory_recall", {"cue": f"canary {mode} Oslo"})
        check(f"[{mode}] forgotten memory is gone", (again.structured_content or {}).get("memories") == [], again)
        err = await c.call_tool("memory_forget", {"id": sc.get("id", "")})
        text = " ".join(getattr(b, "text", "") for b in err.content)
        check(f"[{mode}] forgetting twice is a tool error", err.is_error and "no memory" in text, text)


def main():
    tmp = tempfile.mkdtemp(prefix="iai-py")
    home = os.path.join(tmp, "h")
    env = dict(os.environ, IAI_MCP_HOME=home, IAI_MCP_PASSPHRASE="python sdk passphrase")
    try:
        subprocess.run([BIN, "init"], env=env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run([BIN, "unlock"], env=env, check=True, stdout=subprocess.DEVNULL)
        asyncio.run(session(home, "legacy", "2025-11-25"))
        asyncio.run(session(home, "auto", "2026-07-28"))
    finally:
        subprocess.run([BIN, "lock"], env=env, stdout=subprocess.DEVNULL)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{results['passed']} passed, {results['failed']} failed")
    sys.exit(1 if results["failed"] else 0)


if __name__ == "__main__":
    main()
