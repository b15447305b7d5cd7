#!/usr/bin/env node
// An Agent Ecology agent in JavaScript, built only from the .proto files.
//
// It authenticates with its bearer token, reads its state and the handbook, transfers scrip
// (idempotently, with a request_id), invokes an artifact, and decodes the server's error details
// (google.rpc.Status in the `grpc-status-details-bin` trailer), honouring RetryInfo.
//
// Environment:
//   ECOLOGY_SERVER           "host:port" or "unix:/path/to/socket"      (default 127.0.0.1:50051);
//                            several as a comma list (active server and standbys): the agent
//                            fails over on a lost connection, STANDBY (to ErrorInfo "active")
//                            and OUTCOME_UNKNOWN, retrying with the same request_id
//   ECOLOGY_TOKEN            the agent's bearer token                    (required)
//   ECOLOGY_TRANSFER_TO      recipient of the transfer                   (no transfer when unset)
//   ECOLOGY_TRANSFER_AMOUNT  scrip to transfer                           (default 1)
//   ECOLOGY_INVOKE           "artifact_id.method" to invoke              (default genesis_store.search)
//   ECOLOGY_INVOKE_ARGS      its arguments as a JSON object              (default {"query": "ledger"})
//   ECOLOGY_TIMEOUT          per-call deadline in seconds                (default 30)
//   ECOLOGY_CA_FILE          TLS: the CA of the server's certificate     (plaintext when unset)
//   ECOLOGY_CERT_FILE        mutual TLS: this agent's client certificate (with ECOLOGY_KEY_FILE)
//   ECOLOGY_KEY_FILE         mutual TLS: its private key
//
// Output: progress lines, then one final JSON line summarizing the run; exit 0 on success,
// 1 on failure (the final line then carries ok=false with the gRPC code, reason and retry delay).
'use strict';

const fs = require('fs');
const path = require('path');
const crypto = require('crypto');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
// proto-loader parses .proto files with protobufjs; use that same copy to decode the error details
// (proto-loader's package definitions carry gRPC (de)serializers, not message decoders).
const protobuf = require(require.resolve('protobufjs', {
  paths: [path.dirname(require.resolve('@grpc/proto-loader/package.json'))],
}));

// -- the contract: .proto files only ----------------------------------------------------------

const API_PROTOS = path.resolve(__dirname, '..', '..', 'protos'); // ecology/v1/*.proto
// google/rpc/{status,error_details}.proto: vendored verbatim from googleapis (Apache-2.0).
const RPC_PROTOS = path.resolve(__dirname, 'protos');
// google/protobuf/{struct,timestamp,any,duration}.proto: protobufjs bundles the well-known types.
const INCLUDE_DIRS = [API_PROTOS, RPC_PROTOS];

const packageDefinition = protoLoader.loadSync(['ecology/v1/world.proto'], {
  keepCase: true, // field names exactly as in the .proto (artifact_id, request_id, ...)
  longs: Number, // int64 -> JS number (scrip and sequence numbers fit easily)
  enums: String,
  defaults: true, // unset fields come back with their default values
  oneofs: true, // Value.kind names the set member of a oneof
  includeDirs: INCLUDE_DIRS,
});
const { World } = grpc.loadPackageDefinition(packageDefinition).ecology.v1;

const rpcRoot = new protobuf.Root();
rpcRoot.resolvePath = (_origin, target) => {
  for (const dir of INCLUDE_DIRS) {
    const full = path.join(dir, target);
    try {
      fs.accessSync(full);
      return full;
    } catch (_) { /* next */ }
  }
  return target; // google/protobuf/*.proto: bundled with protobufjs
};
rpcRoot.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
rpcRoot.resolveAll();
const StatusType = rpcRoot.lookupType('google.rpc.Status');

// -- google.protobuf.Struct / Value <-> plain JS ---------------------------------------------

function toValue(v) {
  if (v === null || v === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof v === 'number') return { numberValue: v };
  if (typeof v === 'string') return { stringValue: v };
  if (typeof v === 'boolean') return { boolValue: v };
  if (Array.isArray(v)) return { listValue: { values: v.map(toValue) } };
  if (typeof v === 'object') return { structValue: toStruct(v) };
  throw new TypeError(`cannot convert ${typeof v} to google.protobuf.Value`);
}

function toStruct(obj) {
  const fields = {};
  for (const [k, v] of Object.entries(obj || {})) fields[k] = toValue(v);
  return { fields };
}

function fromValue(v) {
  if (!v) return null;
  switch (v.kind) {
    case 'nullValue': return null;
    case 'numberValue': return v.numberValue;
    case 'stringValue': return v.stringValue;
    case 'boolValue': return v.boolValue;
    case 'structValue': return fromStruct(v.structValue);
    case 'listValue': return ((v.listValue && v.listValue.values) || []).map(fromValue);
    default: return null;
  }
}

function fromStruct(s) {
  const out = {};
  for (const [k, v] of Object.entries((s && s.fields) || {})) out[k] = fromValue(v);
  return out;
}

function timestampToISO(ts) {
  if (!ts) return null;
  return new Date(Number(ts.seconds) * 1000 + Math.floor((ts.nanos || 0) / 1e6)).toISOString();
}

// -- errors: google.rpc.Status details in the grpc-status-details-bin trailer -------------------

const CODE_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, n]) => [n, name]));

/** Decode a grpc-js ServiceError into {code, reason, field, retry_after, message}. */
function decodeError(err) {
  const out = {
    code: CODE_NAMES[err.code] || String(err.code),
    reason: CODE_NAMES[err.code] || 'UNKNOWN', // when the server sent no ErrorInfo
    field: null,
    retry_after: null, // seconds, only when RetryInfo says waiting helps
    message: err.details || err.message,
  };
  const raw = err.metadata && err.metadata.get('grpc-status-details-bin');
  if (!raw || raw.length === 0) return out;
  let status;
  try {
    status = StatusType.decode(raw[0]);
  } catch (e) {
    out.details_error = `undecodable grpc-status-details-bin: ${e.message}`;
    return out;
  }
  for (const any of status.details || []) {
    const typeName = any.type_url.slice(any.type_url.lastIndexOf('/') + 1);
    if (typeName === 'google.rpc.ErrorInfo') {
      const info = rpcRoot.lookupType(typeName).decode(any.value);
      out.reason = info.reason;
      out.domain = info.domain;
      if (info.metadata && info.metadata.field) out.field = info.metadata.field;
      if (info.metadata && info.metadata.active) out.active = info.metadata.active;
    } else if (typeName === 'google.rpc.RetryInfo') {
      const ri = rpcRoot.lookupType(typeName).toObject(
        rpcRoot.lookupType(typeName).decode(any.value), { longs: Number, defaults: true });
      const d = ri.retry_delay || { seconds: 0, nanos: 0 };
      out.retry_after = Number(d.seconds) + Number(d.nanos) / 1e9;
    }
  }
  return out;
}

class CallError extends Error {
  constructor(rpc, info) {
    super(`${rpc} failed: ${info.code} reason=${info.reason} retry_after=${info.retry_after ?? 'none'}: ${info.message}`);
    this.rpc = rpc;
    this.info = info;
  }
}

// -- calls -------------------------------------------------------------------------------------

const sleep = (s) => new Promise((resolve) => setTimeout(resolve, s * 1000));

// TLS for TCP addresses when ECOLOGY_CA_FILE is set (unix sockets are always plaintext).
function channelCredentials(target, env) {
  if (!env.ECOLOGY_CA_FILE || target.startsWith('unix:')) return grpc.credentials.createInsecure();
  const read = (name) => (env[name] ? fs.readFileSync(env[name]) : null);
  return grpc.credentials.createSsl(read('ECOLOGY_CA_FILE'), read('ECOLOGY_KEY_FILE'), read('ECOLOGY_CERT_FILE'));
}

// Fail over to another server (several addresses): the server is gone, is a standby, or lost
// its database during COMMIT. STANDBY applied nothing, so any call may go elsewhere; the others
// only when a retry is safe (a read, or a mutation with a request_id).
const READS = new Set(['GetState', 'ReadArtifact', 'ListArtifacts']);
const FAILOVER_SECONDS = 30;

class Agent {
  constructor(target, token, timeoutSeconds) {
    this.targets = target.split(',').map((t) => t.trim()).filter(Boolean);
    this.target = this.targets[0];
    this.clients = new Map();
    this.token = token;
    this.timeout = timeoutSeconds;
    this.retries = 0;
    this.failovers = 0;
  }

  get client() {
    if (!this.clients.has(this.target)) {
      this.clients.set(this.target, new World(this.target, channelCredentials(this.target, process.env)));
    }
    return this.clients.get(this.target);
  }

  /** Move to the server an error names as active, else to the next address. */
  failOver(info) {
    let next = info.active;
    if (!next || next === this.target) {
      next = this.targets[(this.targets.indexOf(this.target) + 1) % this.targets.length];
    } else if (!this.targets.includes(next)) {
      this.targets.push(next);
    }
    if (next !== this.target) {
      log(`failing over from ${this.target} to ${next} (${info.reason})`);
      this.target = next;
      this.failovers += 1;
    }
  }

  once(rpc, request) {
    const md = new grpc.Metadata();
    md.set('authorization', `Bearer ${this.token}`);
    const deadline = new Date(Date.now() + this.timeout * 1000);
    return new Promise((resolve, reject) => {
      this.client[rpc](request, md, { deadline }, (err, resp) => (err ? reject(err) : resolve(resp)));
    });
  }

  /** once(), going from server to server while that helps (several addresses only). */
  async onceFailingOver(rpc, request) {
    const safe = READS.has(rpc) || Boolean(request.request_id);
    const started = Date.now();
    for (;;) {
      try {
        return await this.once(rpc, request);
      } catch (err) {
        const info = decodeError(err);
        const lost = info.reason === 'UNAVAILABLE' || info.reason === 'DEADLINE_EXCEEDED' || info.reason === 'OUTCOME_UNKNOWN';
        const go = this.targets.length > 1 && (info.reason === 'STANDBY' || (safe && lost));
        if (!go || Date.now() - started > FAILOVER_SECONDS * 1000) throw err;
        this.failOver(info);
        await sleep(0.1);
      }
    }
  }

  /** Unary call; on an error with RetryInfo, wait the given delay and retry once (same request,
   *  so the same request_id: the server applies a mutation at most once). */
  async call(rpc, request) {
    try {
      return await this.onceFailingOver(rpc, request);
    } catch (err) {
      const info = decodeError(err);
      log(`${rpc}: error ${info.code} reason=${info.reason} retry_after=${info.retry_after ?? 'none'}: ${info.message}`);
      if (info.retry_after === null) throw new CallError(rpc, info);
      log(`${rpc}: honouring RetryInfo, retrying once in ${info.retry_after.toFixed(3)}s`);
      this.retries += 1;
      await sleep(info.retry_after);
      try {
        return await this.onceFailingOver(rpc, request);
      } catch (err2) {
        throw new CallError(rpc, decodeError(err2));
      }
    }
  }

  async invoke(artifactId, method, args, requestId = '') {
    const resp = await this.call('InvokeArtifact', {
      artifact_id: artifactId, method, args: toStruct(args), request_id: requestId,
    });
    return fromValue(resp.result);
  }

  close() {
    for (const client of this.clients.values()) client.close();
  }
}

function log(line) {
  process.stdout.write(`[js-agent] ${line}\n`);
}

function logError(line) {
  process.stderr.write(`[js-agent] ${line}\n`);
}

function parseInvoke(spec) {
  const dot = spec.lastIndexOf('.'); // artifact ids may contain dots; method names may not
  if (dot <= 0 || dot === spec.length - 1) throw new Error(`ECOLOGY_INVOKE must be "artifact_id.method", got ${JSON.stringify(spec)}`);
  return [spec.slice(0, dot), spec.slice(dot + 1)];
}

/** JSON with sorted keys, to compare results regardless of key order. */
function canonical(v) {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`).join(',')}}`;
  }
  return JSON.stringify(v);
}

function summarize(result) {
  if (result && typeof result === 'object' && !Array.isArray(result)) {
    const out = { keys: Object.keys(result).sort() };
    for (const [k, v] of Object.entries(result)) if (Array.isArray(v)) out[`${k}_count`] = v.length;
    return out;
  }
  return { value: result };
}

async function main() {
  const env = process.env;
  const target = env.ECOLOGY_SERVER || '127.0.0.1:50051';
  const token = env.ECOLOGY_TOKEN;
  if (!token) throw new Error('ECOLOGY_TOKEN is not set');
  const timeout = Number(env.ECOLOGY_TIMEOUT || 30);
  const [invokeId, invokeMethod] = parseInvoke(env.ECOLOGY_INVOKE || 'genesis_store.search');
  const invokeArgs = JSON.parse(env.ECOLOGY_INVOKE_ARGS || (env.ECOLOGY_INVOKE ? '{}' : '{"query": "ledger"}'));
  const transferTo = env.ECOLOGY_TRANSFER_TO || '';
  const amount = Number(env.ECOLOGY_TRANSFER_AMOUNT || 1);

  const agent = new Agent(target, token, timeout);
  const summary = { ok: false, server: target };
  try {
    // 1. Observe: the server's clock is the only time.
    summary.step = 'GetState';
    const before = await agent.call('GetState', {});
    const compute = (before.flow || []).find((f) => f.name === 'compute');
    log(`I am ${before.principal_id}; server time ${timestampToISO(before.now)}; scrip ${before.scrip}; ` +
        `compute ${compute ? `${compute.balance.toFixed(2)}/${compute.capacity}` : 'n/a'}`);
    summary.principal_id = before.principal_id;
    summary.server_time = timestampToISO(before.now);
    summary.scrip_before = before.scrip;
    summary.compute = compute ? compute.balance : null;

    // 2. Read the rules.
    summary.step = 'handbook';
    const page = await agent.invoke('genesis_handbook', 'read', { page: 'rules' });
    const text = (page && page.text) || '';
    log(`handbook "rules": ${text.length} chars; first line: ${text.split('\n')[0]}`);
    summary.handbook_chars = text.length;

    // 3. Transfer scrip, retry-safe: the same request_id never applies twice.
    if (transferTo) {
      summary.step = 'transfer';
      const requestId = `js-agent-${crypto.randomUUID()}`;
      const args = { to: transferTo, amount, memo: 'hello from the JavaScript agent' };
      const first = await agent.invoke('genesis_ledger', 'transfer', args, requestId);
      // Replaying the same request (as after a lost reply) returns the first outcome, applies nothing.
      const replay = await agent.invoke('genesis_ledger', 'transfer', args, requestId);
      log(`transferred ${amount} scrip to ${transferTo} (request_id ${requestId}): ${JSON.stringify(first)}`);
      summary.transfer = {
        to: transferTo, amount, request_id: requestId, result: first,
        replay_same_outcome: canonical(first) === canonical(replay),
      };
    }

    // 4. Invoke an artifact.
    summary.step = 'invoke';
    const result = await agent.invoke(invokeId, invokeMethod, invokeArgs);
    log(`${invokeId}.${invokeMethod}(${JSON.stringify(invokeArgs)}) -> ${JSON.stringify(result).slice(0, 200)}`);
    summary.invoked = { artifact_id: invokeId, method: invokeMethod, ...summarize(result) };

    // 5. Observe again.
    summary.step = 'GetState';
    const after = await agent.call('GetState', {});
    summary.scrip_after = after.scrip;
    delete summary.step;
    summary.retries = agent.retries;
    summary.failovers = agent.failovers;
    summary.ok = true;
  } catch (err) {
    if (err instanceof CallError) {
      logError(`error: ${err.message}`);
      Object.assign(summary, { error: err.info, rpc: err.rpc });
    } else {
      logError(`error: ${err.stack || err}`);
      summary.error = { reason: 'CLIENT_ERROR', message: String(err.message || err) };
    }
    summary.retries = agent.retries;
    summary.failovers = agent.failovers;
  } finally {
    agent.close();
  }
  process.stdout.write(`${JSON.stringify(summary)}\n`);
  return summary.ok ? 0 : 1;
}

main().then(
  (code) => { process.exitCode = code; },
  (err) => {
    logError(`error: ${err.stack || err}`);
    process.stdout.write(`${JSON.stringify({ ok: false, error: { reason: 'CLIENT_ERROR', message: String(err.message || err) } })}\n`);
    process.exitCode = 1;
  },
);
