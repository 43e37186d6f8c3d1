// A bilevel.v1 client in another language, built from proto/ alone (grpc-js and
// proto-loader; health and reflection protos from their npm packages). It checks what a
// client author relies on and prints one JSON report; tests/test_api_node_client.py
// starts a real server on loopback, runs this and asserts the report.
//
// usage: node client.js HOST:PORT TOKEN OTHER_TOKEN
// TOKEN and OTHER_TOKEN are two principals' (users): OTHER_TOKEN's calls on TOKEN's run
// are the cross-principal checks.
"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const descriptor = require("protobufjs/ext/descriptor");

const [address, token, otherToken] = process.argv.slice(2);
const PROTO_ROOT = path.resolve(__dirname, "..", "..", "proto");
const LOADER = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

function load(files, includeDirs) {
  return grpc.loadPackageDefinition(protoLoader.loadSync(files, { ...LOADER, includeDirs }));
}

const bilevel = load(["bilevel/v1/runs.proto", "bilevel/v1/sandbox.proto",
  "bilevel/v1/principals.proto"], [PROTO_ROOT]).bilevel.v1;
const health = load(["health/v1/health.proto"],
  [path.dirname(require.resolve("grpc-health-check/package.json")) + "/proto"]).grpc.health.v1;
const reflectionRoot = path.dirname(require.resolve("@grpc/reflection/package.json")) + "/build/proto";
const reflection = load(["grpc/reflection/v1/reflection.proto"], [reflectionRoot]).grpc.reflection.v1;

const creds = grpc.credentials.createInsecure();
const runs = new bilevel.RunService(address, creds);
const sandbox = new bilevel.SandboxService(address, creds);
const principals = new bilevel.PrincipalService(address, creds);
const healthClient = new health.Health(address, creds);
const reflectionClient = new reflection.ServerReflection(address, creds);

// The documented auth: `authorization: Bearer <token>` call metadata.
function auth(bearer = token) {
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${bearer}`);
  return md;
}

function unary(client, method, request, metadata) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata || auth(), { deadline: Date.now() + 60000 },
      (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

async function checkHealth() {
  const reply = await unary(healthClient, "Check", { service: "" }, new grpc.Metadata());
  let tokenless;
  try {
    await unary(runs, "ListRuns", {}, new grpc.Metadata());
    tokenless = "OK";
  } catch (err) {
    tokenless = grpc.status[err.code];
  }
  return { status: reply.status, tokenless_list_runs: tokenless };
}

function reflect(requests) {
  return new Promise((resolve, reject) => {
    const call = reflectionClient.ServerReflectionInfo(auth());
    const replies = [];
    call.on("data", (r) => replies.push(r));
    call.on("error", reject);
    call.on("end", () => resolve(replies));
    for (const r of requests) call.write(r);
    call.end();
  });
}

function comments(file) {
  // source_code_info location path [6, s, 2, m] is service s, method m.
  const out = {};
  const info = file.sourceCodeInfo || { location: [] };
  for (const loc of info.location) {
    const p = loc.path;
    if (p.length === 4 && p[0] === 6 && p[2] === 2) {
      const service = file.service[p[1]];
      out[`${service.name}.${service.method[p[3]].name}`] =
        (loc.leadingComments || "").trim();
    }
  }
  return out;
}

async function checkReflection() {
  const [list, symbol] = await reflect([
    { list_services: "" }, { file_containing_symbol: "bilevel.v1.RunService" }]);
  const files = symbol.file_descriptor_response.file_descriptor_proto.map(
    (raw) => descriptor.FileDescriptorProto.decode(raw));
  const runsFile = files.find((f) => f.name === "bilevel/v1/runs.proto");
  return {
    services: list.list_services_response.service.map((s) => s.name).sort(),
    files: files.map((f) => f.name),
    create_run_comment: comments(runsFile)["RunService.CreateRun"] || "",
  };
}

function stream(call, onEvent) {
  return new Promise((resolve, reject) => {
    call.on("data", (e) => onEvent(e, call));
    call.on("error", (err) => (err.code === grpc.status.CANCELLED ? resolve() : reject(err)));
    call.on("end", resolve);
  });
}

async function checkExecute() {
  const code = "for i in range(3):\n    print('line', i)\n";
  const request = { files: { "main.py": Buffer.from(code) },
                    command: ["python3", "main.py"], runtime: "RUNTIME_RUNC" };
  const kinds = [];
  const stdout = [];
  let result = null;
  await stream(sandbox.Execute(request, auth()), (e) => {
    kinds.push(e.event);
    if (e.event === "output" && e.output.stream === "STREAM_STDOUT") {
      stdout.push(e.output.data.toString());
    }
    if (e.event === "finished") result = e.finished.result;
  });
  return { kinds, stdout, status: result.status, stdout_head: result.stdout_head };
}

async function checkWatchWithReconnect() {
  const run = await unary(runs, "CreateRun", {
    task: { preset: "surrogate" }, budgets: { max_trials: 3 },
    proposer: { kind: "PROPOSER_KIND_LOCAL" },
  });
  const seqs = [];
  // First connection: leave after three events, as a client that loses its network.
  await stream(runs.WatchRun({ run_id: run.id }, auth()), (e, call) => {
    seqs.push(Number(e.seq));
    if (seqs.length === 3) call.cancel();
  });
  const firstConnection = seqs.length;
  const kinds = [];
  const finished = [];
  await stream(runs.WatchRun({ run_id: run.id, after_seq: String(seqs[seqs.length - 1]) },
    auth()), (e) => {
    seqs.push(Number(e.seq));
    kinds.push(e.event);
    if (e.event === "trial_finished") finished.push(e.trial_finished);
  });
  const final = await unary(runs, "GetRun", { run_id: run.id });
  return {
    run_id: run.id, first_connection: firstConnection, seqs,
    last_kind: kinds[kinds.length - 1], state: final.state, trials_done: final.trials_done,
    echoed_proposer_kind: final.request.proposer.kind, has_llm: final.request.llm !== null,
    // The task-neutral loss, the metric and direction it is in, and the deprecated names.
    loss: {
      metric: final.request.task.metric, maximize: final.request.task.maximize,
      baseline: final.baseline_loss, best: final.best_loss,
      deprecated: [final.baseline_val_bpb, final.best_val_bpb],
      trials: finished.map((t) => [t.loss, t.val_bpb]),
    },
  };
}

// The other principal calls every RunService method on the run: each must answer as
// for a run that does not exist.
async function outcome(call) {
  try {
    await call();
    return { code: "OK", details: "" };
  } catch (err) {
    return { code: grpc.status[err.code], details: err.details || "" };
  }
}

function watchAll(runId, md) {
  return stream(runs.WatchRun({ run_id: runId }, md), () => {});
}

async function checkCrossPrincipal(runId) {
  const other = auth(otherToken);
  const unknownId = "run-000000000000";
  const calls = {
    GetRun: (id) => unary(runs, "GetRun", { run_id: id }, other),
    CancelRun: (id) => unary(runs, "CancelRun", { run_id: id }, other),
    ResumeRun: (id) => unary(runs, "ResumeRun", { run_id: id }, other),
    DeleteRun: (id) => unary(runs, "DeleteRun", { run_id: id, cancel: true }, other),
    GetArtifact: (id) => unary(runs, "GetArtifact", { run_id: id, name: "best/train.py" }, other),
    WatchRun: (id) => watchAll(id, other),
  };
  const methods = {};
  for (const [name, call] of Object.entries(calls)) {
    const seen = await outcome(() => call(runId));
    const unknown = await outcome(() => call(unknownId));
    methods[name] = {
      code: seen.code,
      same_as_unknown: seen.code === unknown.code &&
        seen.details.split(runId).join("X") === unknown.details.split(unknownId).join("X"),
      names_owner: seen.details.includes(me.name),
      says_permission: seen.details.toLowerCase().includes("permission"),
    };
  }
  const listed = await unary(runs, "ListRuns", { page_size: 500 }, other);
  const them = await unary(principals, "WhoAmI", {}, other);
  const owner = await unary(runs, "GetRun", { run_id: runId });
  return {
    methods, other: them.name, owner: owner.owner,
    other_lists_it: listed.runs.some((r) => r.id === runId),
    other_lists: listed.runs.length,
  };
}

let me = { name: "" };

async function checkDelete(runId) {
  const deleted = await unary(runs, "DeleteRun", { run_id: runId });
  let after;
  try {
    await unary(runs, "GetRun", { run_id: runId });
    after = "OK";
  } catch (err) {
    after = grpc.status[err.code];
  }
  return { run_id: deleted.run_id, freed_bytes: Number(deleted.freed_bytes), get_after: after };
}

async function main() {
  const report = {};
  report.health = await checkHealth();
  report.reflection = await checkReflection();
  report.execute = await checkExecute();
  me = await unary(principals, "WhoAmI", {});
  report.watch = await checkWatchWithReconnect();
  report.cross = await checkCrossPrincipal(report.watch.run_id);
  report.delete = await checkDelete(report.watch.run_id);
  process.stdout.write(JSON.stringify(report) + "\n");
}

main().then(() => process.exit(0), (err) => {
  process.stderr.write(`node client failed: ${err.stack || err}\n`);
  process.exit(1);
});
