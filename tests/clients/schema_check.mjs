// Our tool schemas through clients we did not write: the TypeScript MCP SDK's
// own listTools (it compiles every output schema with Ajv and warns on what it
// does not understand), then every input and output schema compiled by Ajv
// for JSON Schema 2020-12 in strict mode. Any error or warning fails.
// Usage: node schema_check.mjs /path/to/iai-mcp   (IAI_MCP_HOME set, unlocked)
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import Ajv2020 from "ajv/dist/2020.js";

const bin = process.argv[2];
const problems = [];
const origWarn = console.warn;
const origError = console.error;
const origLog = console.log;
const capture = (kind) => (...args) => problems.push(`${kind}: ${args.map(String).join(" ")}`);
console.warn = capture("console.warn");
console.error = capture("console.error");

const transport = new StdioClientTransport({ command: bin, args: ["mcp"], env: { ...process.env }, stderr: "ignore" });
const client = new Client({ name: "schema-check", version: "1.0.0" });
await client.connect(transport);
const { tools } = await client.listTools();

const logger = { log: () => {}, warn: (...a) => problems.push(`ajv warn: ${a.join(" ")}`), error: (...a) => problems.push(`ajv error: ${a.join(" ")}`) };
let compiled = 0;
for (const tool of tools) {
  for (const [which, schema] of [["inputSchema", tool.inputSchema], ["outputSchema", tool.outputSchema]]) {
    if (!schema) continue;
    const ajv = new Ajv2020({ strict: true, allErrors: true, logger });
    try {
      ajv.compile(schema);
      compiled++;
    } catch (e) {
      problems.push(`${tool.name}.${which}: ${e.message}`);
    }
  }
}
// A tool that takes no arguments refuses unknown ones.
const stats = await client.callTool({ name: "memory_stats", arguments: { surprise: 1 } });
if (!stats.isError) problems.push("memory_stats accepted an unknown argument");
await client.close();

console.warn = origWarn;
console.error = origError;
for (const p of problems) origLog(`FAIL ${p}`);
origLog(`${tools.length} tools, ${compiled} schemas compiled by Ajv 2020-12 strict, ${problems.length} problems`);
origLog(`${problems.length === 0 ? 1 : 0} passed, ${problems.length === 0 ? 0 : 1} failed`);
process.exit(problems.length === 0 ? 0 : 1);
