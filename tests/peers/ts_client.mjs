// Drives an MCP endpoint with the TypeScript SDK's client (legacy era: initialize and a
// session) and prints one JSON report, the same shape py_client.py prints. Plan key
// "task_calls" runs tools as 2025-11-25 tasks (the SDK's experimental task stream) and records
// what the stream reported, then lists the session's tasks.
//
// usage: node ts_client.mjs URL PLAN   (MCPG_NODE_MODULES names the node_modules holding the SDK)
import { pathToFileURL } from "node:url";
import { join } from "node:path";

const modules = process.env.MCPG_NODE_MODULES;
const sdk = (p) => import(pathToFileURL(join(modules, "@modelcontextprotocol/sdk/dist/esm", p)).href);
const { Client } = await sdk("client/index.js");
const { StreamableHTTPClientTransport } = await sdk("client/streamableHttp.js");

const [url, planJson] = process.argv.slice(2);
const plan = JSON.parse(planJson ?? "{}");
const transport = new StreamableHTTPClientTransport(new URL(url));
const client = new Client({ name: "mcpg-e2e", version: "1.0.0" }, { capabilities: {} });
await client.connect(transport);

async function allPages(fetch, key) {
  const items = [];
  let cursor;
  do {
    const page = await fetch(cursor === undefined ? {} : { cursor });
    items.push(...page[key]);
    cursor = page.nextCursor;
  } while (cursor !== undefined);
  return items;
}

const textOf = (contents) =>
  contents.map((c) => c.text ?? c.resource?.text ?? `<${c.type ?? "?"}>`);

const caps = client.getServerCapabilities() ?? {};
const report = {
  protocol_version: transport.protocolVersion,
  era: "legacy",
  session: transport.sessionId ?? null,
  server: client.getServerVersion()?.name ?? null,
  tools: (await allPages((p) => client.listTools(p), "tools")).map((t) => t.name),
  prompts: caps.prompts ? (await allPages((p) => client.listPrompts(p), "prompts")).map((p) => p.name) : [],
  resources: caps.resources ? (await allPages((p) => client.listResources(p), "resources")).map((r) => r.uri) : [],
  templates: caps.resources
    ? (await allPages((p) => client.listResourceTemplates(p), "resourceTemplates")).map((t) => t.uriTemplate)
    : [],
  calls: [],
  prompts_got: [],
  reads: [],
};
for (const call of plan.calls ?? []) {
  try {
    const r = await client.callTool({ name: call.name, arguments: call.arguments ?? {} });
    report.calls.push({ name: call.name, is_error: !!r.isError, text: textOf(r.content) });
  } catch (e) {
    report.calls.push({ name: call.name, exception: String(e) });
  }
}
for (const p of plan.prompts ?? []) {
  try {
    const g = await client.getPrompt({ name: p.name, arguments: p.arguments ?? {} });
    report.prompts_got.push({ name: p.name, messages: g.messages.length, text: textOf(g.messages.map((m) => m.content)) });
  } catch (e) {
    report.prompts_got.push({ name: p.name, exception: String(e) });
  }
}
for (const uri of plan.reads ?? []) {
  try {
    const r = await client.readResource({ uri });
    report.reads.push({ uri, text: textOf(r.contents) });
  } catch (e) {
    report.reads.push({ uri, exception: String(e) });
  }
}
if (plan.task_calls) {
  report.task_calls = [];
  for (const call of plan.task_calls) {
    const seen = [];
    let text = null;
    for await (const m of client.experimental.tasks.callToolStream({ name: call.name, arguments: call.arguments ?? {} })) {
      if (m.task) seen.push({ type: m.type, taskId: m.task.taskId, status: m.task.status });
      if (m.type === "result") {
        text = textOf(m.result.content ?? []);
        seen.push({ type: "result", relatedTask: m.result._meta?.["io.modelcontextprotocol/related-task"]?.taskId ?? null });
      }
      if (m.type === "error") seen.push({ type: "error", error: String(m.error) });
    }
    report.task_calls.push({ name: call.name, seen, text });
  }
  report.tasks = (await client.experimental.tasks.listTasks()).tasks.map((t) => ({ taskId: t.taskId, status: t.status }));
}
await transport.terminateSession().catch(() => {});
await client.close();
console.log(JSON.stringify(report));
