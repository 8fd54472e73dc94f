"""The real Claude Code and the real Codex CLI, each driven through a short
session against a stand-in model API served on 127.0.0.1 (standin_model.py),
with iai-mcp's hooks installed and its MCP server registered (issue 9).

For each host it checks what the host really does with our output:
  1. the session-start context reaches the model;
  2. the hooks capture the session's turns (the prompt and the reply);
  3. an MCP recall of a worst-case memory (256 KiB of what JSON escapes
     worst) comes back inline in the model's next request, under the size
     past which the host would divert it to a file;
  4. no file containing the canary appears anywhere outside the iai-mcp home
     (the host's directories and the temp directories), except the host's own
     session transcript, which records the conversation by design.

Usage: hosts_e2e.py IAI_MCP_BIN CLAUDE_BIN CODEX_BIN
Prints 'N passed, M failed' and exits non-zero on any failure.
"""
import json
import os
import random
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
HOST_TOOL_RESULT_BYTES = 36_000  # storer/src/limits.rs
results = []


def check(name, ok, detail=""):
    results.append((name, ok))
    print(f"{'PASS' if ok else 'FAIL'} {name}{'' if ok else ': ' + detail}", flush=True)


def run(cmd, env, cwd=None, timeout=180, stdin=None):
    return subprocess.run(cmd, env=env, cwd=cwd, timeout=timeout, input=stdin, capture_output=True, text=True)


def start_model(work, canary, reply):
    port_file = os.path.join(work, "port")
    log = os.path.join(work, "model.jsonl")
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "standin_model.py"), port_file, log, canary, reply, "300"])
    for _ in range(100):
        if os.path.exists(port_file) and open(port_file).read().strip():
            return proc, int(open(port_file).read()), log
        time.sleep(0.1)
    raise RuntimeError("the stand-in model did not start")


def requests(log):
    if not os.path.exists(log):
        return []
    return [json.loads(line) for line in open(log)]


def files_with(root, needle, skip):
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not any(os.path.join(dirpath, d).startswith(s) for s in skip)]
        for f in filenames:
            p = os.path.join(dirpath, f)
            if any(p.startswith(s) for s in skip) or not os.path.isfile(p) or os.path.islink(p):
                continue
            try:
                with open(p, "rb") as fh:
                    if needle.encode() in fh.read():
                        found.append(p)
            except OSError:
                pass
    return found


def setup(work, bin_):
    home = os.path.join(work, "home")
    iai = os.path.join(work, "iai")
    tmp = os.path.join(work, "tmp")
    proj = os.path.join(work, "proj")
    for d in (home, tmp, proj):
        os.makedirs(d)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IAI_MCP", "ANTHROPIC", "OPENAI", "CLAUDE"))}
    env.update(HOME=home, IAI_MCP_HOME=iai, TMPDIR=tmp)
    init_env = dict(env, IAI_MCP_PASSPHRASE="host end to end passphrase")
    for args in (["init"], ["unlock"]):
        r = run([bin_, *args], init_env)
        assert r.returncode == 0, r.stderr
    return env, home, iai, tmp, proj


def words(host):
    """A work directory and the run's random words: the canary every memory
    holds, the cue only the worst-case memory holds, the prompt's and the
    reply's own words."""
    rnd = lambda prefix: f"{prefix}{random.randrange(10**9)}"
    work = tempfile.mkdtemp(prefix=f"iai-e2e-{host}-")
    return work, rnd("zebracanary"), rnd("worstcue"), rnd("promptword"), f"standin reply {rnd('replyword')}"


def worst_memory(canary, cue):
    text = f"{cue} {canary} worst case memory "
    return text + '"\\' * ((262_144 - len(text)) // 2)


def common_checks(host, env, bin_, iai, work, home, tmp, log, canary, cue, prompt_word, reply, transcripts):
    reqs = [r for r in requests(log) if r["path"].split("?")[0].endswith(("/messages", "/responses"))]
    bodies = [json.dumps(r["body"]) for r in reqs]
    check(f"{host}: the model was called", len(reqs) >= 2, f"{len(reqs)} requests")
    check(f"{host}: the session-start context reached the model",
          any("Notes iai-mcp stored from earlier sessions" in b and canary in b for b in bodies[:1]),
          bodies[0][:300] if bodies else "no request")
    # The recall result, as the host handed it to the model.
    tool_outputs = []
    for r in reqs:
        b = r["body"]
        for m in b.get("messages", []):
            for c in (m.get("content") if isinstance(m.get("content"), list) else []):
                if c.get("type") == "tool_result":
                    content = c.get("content")
                    tool_outputs.append(content if isinstance(content, str) else json.dumps(content))
        for item in b.get("input", []) if isinstance(b.get("input"), list) else []:
            if item.get("type") == "function_call_output":
                out = item.get("output")
                tool_outputs.append(out if isinstance(out, str) else json.dumps(out))
    inline = [t for t in tool_outputs if "Stored notes recalled from iai-mcp memory" in t and cue in t and "worst case memory" in t]
    diverted = [t for t in tool_outputs if "saved to" in t.lower() or "output too large" in t.lower()]
    check(f"{host}: the MCP recall of a worst-case memory came back inline", bool(inline) and not diverted,
          (tool_outputs[0][:400] if tool_outputs else "no tool result reached the model"))
    if inline:
        largest = max(len(t.encode()) for t in inline)
        print(f"  {host}: recall result as the model saw it: {largest} bytes")
        check(f"{host}: the worst-case memory filled the result up to our budget, not past it",
              HOST_TOOL_RESULT_BYTES // 2 < largest <= HOST_TOOL_RESULT_BYTES * 2, f"{largest} bytes")
        cut = [t[t.find("truncated") - 100:t.find("truncated") + 50] for t in inline if "truncated…" in t]
        check(f"{host}: the host did not cut the result", not cut, repr(cut[:1]))
    # The hooks captured the turns of this session.
    r = run([bin_, "recall", prompt_word, "--json", "--limit", "20"], env)
    hits = json.loads(r.stdout or "{}").get("hits", [])
    texts = [h["text"] for h in hits]
    check(f"{host}: the hooks captured the prompt", any(prompt_word in t for t in texts), r.stdout[:300] + r.stderr)
    r = run([bin_, "recall", reply.split()[-1], "--json"], env)
    check(f"{host}: the hooks captured the reply", reply in (r.stdout or ""), r.stdout[:300] + r.stderr)
    # No copy of the canary anywhere but the home and the host's transcripts.
    skip = [iai, log, os.path.join(work, "memory.txt")] + transcripts
    leaks = files_with(home, canary, skip) + files_with(tmp, canary, skip)
    leaks += [p for p in files_with("/tmp", canary, skip + [work]) if os.path.getmtime(p) >= START]
    check(f"{host}: no file outside the home holds the canary", not leaks, ", ".join(leaks[:5]))


def claude(bin_, claude_bin):
    work, canary, cue, prompt_word, reply = words("claude")
    env, home, iai, tmp, proj = setup(work, bin_)
    model = None
    try:
        assert run([bin_, "hooks", "install", "--target", "claude"], env).returncode == 0
        r = run([claude_bin, "mcp", "add", "--scope", "user", "iai-mcp", "--", bin_, "mcp"], env, cwd=proj)
        assert r.returncode == 0, r.stderr
        run([bin_, "capture", f"the canary word is {canary}"], env)
        with open(os.path.join(work, "memory.txt"), "w") as f:
            f.write(worst_memory(canary, cue))
        run([bin_, "capture", "-"], env, stdin=open(os.path.join(work, "memory.txt")).read())
        model, port, log = start_model(work, cue, reply)
        host_env = dict(env, ANTHROPIC_BASE_URL=f"http://127.0.0.1:{port}", ANTHROPIC_API_KEY="sk-ant-standin",
                        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", ENABLE_TOOL_SEARCH="false")
        r = run([claude_bin, "-p", f"what is the canary word {prompt_word}", "--allowedTools", "mcp__iai-mcp__memory_recall",
                 "--output-format", "json"], host_env, cwd=proj)
        out = json.loads(r.stdout or "{}")
        check("claude: the session completed with the stand-in model's reply", reply in out.get("result", ""),
              (r.stdout + r.stderr)[:500])
        model.terminate()
        model.wait()
        # Claude Code's own record of the conversation (what the model saw is in it by design).
        common_checks("claude", env, bin_, iai, work, home, tmp, log, canary, cue, prompt_word, reply,
                      [os.path.join(home, ".claude", "projects")])
        # Locked: the user is told, and the model gets no memory.
        run([bin_, "lock"], env)
        os.remove(log)
        os.remove(os.path.join(work, "port"))
        model, port, log = start_model(work, cue, reply)
        host_env["ANTHROPIC_BASE_URL"] = f"http://127.0.0.1:{port}"
        r = run([claude_bin, "-p", "hello while locked", "--output-format", "stream-json", "--verbose"], host_env, cwd=proj)
        told = [json.loads(l) for l in r.stdout.splitlines() if '"hook_response"' in l and "iai-mcp memory is locked" in l]
        check("claude: a locked store is said to the user (systemMessage), not silently skipped", bool(told),
              r.stdout[-600:] + r.stderr[-300:])
        bodies = [json.dumps(x["body"]) for x in requests(log)]
        check("claude: a locked store gives the model no memory", bodies and not any("iai-mcp stored" in b for b in bodies))
    finally:
        if model:
            model.terminate()
        run([bin_, "lock"], env)


def codex(bin_, codex_bin):
    work, canary, cue, prompt_word, reply = words("codex")
    env, home, iai, tmp, proj = setup(work, bin_)
    model = None
    try:
        r = run([bin_, "hooks", "install", "--target", "codex"], env)
        assert r.returncode == 0, r.stderr
        check("codex: install says how to trust the hooks", "Trust all and continue" in r.stdout, r.stdout)
        run([bin_, "capture", f"the canary word is {canary}"], env)
        with open(os.path.join(work, "memory.txt"), "w") as f:
            f.write(worst_memory(canary, cue))
        run([bin_, "capture", "-"], env, stdin=open(os.path.join(work, "memory.txt")).read())
        model, port, log = start_model(work, cue, reply)
        with open(os.path.join(home, ".codex", "config.toml"), "w") as f:
            f.write(f'''model = "gpt-standin"
# Every model Codex ships cuts tool output at 10,000 tokens; the stand-in
# model is unknown to Codex, so it gets that limit explicitly.
tool_output_token_limit = 10000
model_provider = "standin"
[model_providers.standin]
name = "standin"
base_url = "http://127.0.0.1:{port}/v1"
wire_api = "responses"
env_key = "STANDIN_API_KEY"
[mcp_servers.iai-mcp]
command = "{bin_}"
args = ["mcp"]
env = {{ IAI_MCP_HOME = "{iai}" }}
''')
        # `hooks status` reports Codex's own trust state: untrusted until the user trusts them.
        status_env = dict(env, PATH=os.path.dirname(codex_bin) + os.pathsep + env.get("PATH", ""))
        st = run([bin_, "hooks", "status", "--target", "codex"], status_env)
        check("codex: hooks status reports Codex's real trust state", "is untrusted" in st.stdout, st.stdout + st.stderr)
        # The user's trust is theirs to give; this test run stands in for it with Codex's own automation switch.
        host_env = dict(env, STANDIN_API_KEY="standin")
        r = run([codex_bin, "exec", "--dangerously-bypass-hook-trust", "--skip-git-repo-check", "-c", 'approval_policy="never"',
                 f"what is the canary word {prompt_word}"], host_env, cwd=proj)
        check("codex: the session completed with the stand-in model's reply", reply in r.stdout, (r.stdout + r.stderr)[-800:])
        check("codex: the hooks ran", "hook: SessionStart Completed" in r.stderr and "hook: Stop Completed" in r.stderr,
              r.stderr[-800:])
        # Codex's own record of the conversation: rollouts and its thread history database.
        common_checks("codex", env, bin_, iai, work, home, tmp, log, canary, cue, prompt_word, reply,
                      [os.path.join(home, ".codex", "sessions"), os.path.join(home, ".codex", "thread_history")])
        # Locked: Codex takes our message for the user (hooks complete, none fails), the model gets no memory.
        run([bin_, "lock"], env)
        r = run([codex_bin, "exec", "--dangerously-bypass-hook-trust", "--skip-git-repo-check", "-c", 'approval_policy="never"',
                 "hello while locked"], host_env, cwd=proj)
        hook_lines = [l for l in r.stderr.splitlines() if l.startswith("hook:")]
        check("codex: while locked, every hook completes (our output is valid for Codex)",
              len([l for l in hook_lines if l.endswith("Completed")]) >= 3 and not any("ailed" in l for l in hook_lines),
              "\n".join(hook_lines))
        last = requests(log)[-1:]
        check("codex: a locked store gives the model no memory",
              bool(last) and "iai-mcp stored" not in json.dumps(last[0]["body"]))
    finally:
        if model:
            model.terminate()
        run([bin_, "lock"], env)


START = time.time()

if __name__ == "__main__":
    iai_bin, claude_bin, codex_bin = sys.argv[1:4]
    for host, fn, b in (("claude", claude, claude_bin), ("codex", codex, codex_bin)):
        try:
            fn(iai_bin, b)
        except Exception as e:  # a crash of the harness is a failure, with its reason
            check(f"{host}: the end-to-end run finished", False, repr(e))
    passed = sum(1 for _, ok in results if ok)
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
