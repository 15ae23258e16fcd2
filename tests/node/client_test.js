'use strict';
// End-to-end test of client/node (VerdictClient) against the real verdictd and the simulated
// ClickPatrol, each started on 127.0.0.1 port 0 (--port_file) in a temp dir. Run by ctest
// (node_client) with VERDICTD_BIN, SIM_BIN and NODE_PATH (client/node/node_modules) set.

const assert = require('node:assert/strict');
const { test, before, after } = require('node:test');
const childProcess = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');

const ROOT = path.join(__dirname, '..', '..');
const { VerdictClient, status } = require(path.join(ROOT, 'client', 'node', 'verdict_client.js'));

const VERDICTD_BIN = process.env.VERDICTD_BIN || path.join(ROOT, 'build', 'verdictd');
const SIM_BIN = process.env.SIM_BIN || path.join(ROOT, 'build', 'clickpatrol_sim');
const TOKEN = 'node-client-test-token';
const GOOD_KEY = 'vk_node_good_51c0e2a9d7b3f486';
const OTHER_KEY = 'vk_node_other_0b9e4c2d6a1f3857';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'verdict_node_test_'));
const children = [];

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Starts `bin` with `args`; resolves to the port it wrote to its --port_file.
async function start(name, bin, args, env = {}) {
  const portFile = path.join(tmp, `${name}.port`);
  const log = fs.openSync(path.join(tmp, `${name}.log`), 'w');
  const child = childProcess.spawn(bin, [...args, `--port_file=${portFile}`], {
    stdio: ['ignore', log, log],
    env: { ...process.env, ...env },
  });
  children.push(child);
  const deadline = Date.now() + 15000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) break;
    if (fs.existsSync(portFile)) {
      const text = fs.readFileSync(portFile, 'utf8').trim();
      if (text) return Number(text);
    }
    await sleep(20);
  }
  throw new Error(`${name} did not start; its log:\n${fs.readFileSync(path.join(tmp, `${name}.log`), 'utf8')}`);
}

function simRequests(port) {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: '/_sim/stats' }, (res) => {
      let body = '';
      res.on('data', (chunk) => { body += chunk; });
      res.on('end', () => resolve(JSON.parse(body).requests));
    }).on('error', reject);
  });
}

function sha256Hex(text) {
  return crypto.createHash('sha256').update(text).digest('hex');
}

let simPort;
let slowSimPort;
let openPort;
let keyedTlsPort;
let mtlsPort;
let pki;

before(async () => {
  simPort = await start('sim', SIM_BIN, ['--listen=127.0.0.1:0', `--token=${TOKEN}`]);
  slowSimPort = await start('slow_sim', SIM_BIN,
    ['--listen=127.0.0.1:0', `--token=${TOKEN}`, '--latency=3s']);
  const common = (name, sim) => [
    '--listen=127.0.0.1:0',
    `--db=${path.join(tmp, `${name}.db`)}`,
    `--upstream_url=http://127.0.0.1:${sim}/`,
  ];
  const env = { CLICKPATROL_TOKEN: TOKEN };
  openPort = await start('open', VERDICTD_BIN, [...common('open', simPort), '--max_batch=2'], env);

  pki = path.join(tmp, 'pki');
  childProcess.execFileSync(path.join(ROOT, 'tests', 'clients', 'make_test_pki.sh'), [pki]);
  const keys = path.join(tmp, 'api_keys');
  fs.writeFileSync(keys, `node-team ${sha256Hex(GOOD_KEY)}\n`, { mode: 0o600 });
  keyedTlsPort = await start('keyed', VERDICTD_BIN, [
    ...common('keyed', slowSimPort),
    `--api_keys_file=${keys}`,
    `--tls_cert=${path.join(pki, 'server.pem')}`,
    `--tls_key=${path.join(pki, 'server.key')}`,
  ], env);
  mtlsPort = await start('mtls', VERDICTD_BIN, [
    ...common('mtls', simPort),
    `--tls_cert=${path.join(pki, 'server.pem')}`,
    `--tls_key=${path.join(pki, 'server.key')}`,
    `--tls_client_ca=${path.join(pki, 'ca.pem')}`,
  ], env);
});

after(() => {
  for (const child of children) child.kill('SIGTERM');
  fs.rmSync(tmp, { recursive: true, force: true });
});

test('a miss then a hit: SOURCE_UPSTREAM with the click, then SOURCE_CACHE', async () => {
  const client = new VerdictClient(`127.0.0.1:${openPort}`, { caller: 'node-test' });
  try {
    const first = await client.checkIp('8.8.8.8', { userAgent: 'Mozilla/5.0' });
    assert.equal(first.source, 'SOURCE_UPSTREAM');
    assert.equal(first.clickSpent, true);
    assert.equal(first.verdict.ip, '8.8.8.8');
    assert.equal(first.verdict.caller, 'node-test');
    assert.notEqual(first.verdict.score, 'SCORE_UNSPECIFIED');
    const second = await client.checkIp('8.8.8.8');
    assert.equal(second.source, 'SOURCE_CACHE');
    assert.equal(second.clickSpent, false);
    assert.equal(second.verdict.score, first.verdict.score);
    assert.deepEqual(second.verdict.checkedAt, first.verdict.checkedAt);
    assert.equal(await simRequests(simPort), 1);

    // max_age 0 always asks ClickPatrol: a second verdict, so history has two pages of one.
    const third = await client.checkIp('8.8.8.8', { maxAgeSeconds: 0 });
    assert.equal(third.source, 'SOURCE_UPSTREAM');
    assert.equal(third.clickSpent, true);
    assert.equal(await simRequests(simPort), 2);
    const history = await client.listVerdictHistory('8.8.8.8', { pageSize: 1 });
    assert.deepEqual(history.map((v) => v.checkedAt), [third.verdict.checkedAt, first.verdict.checkedAt]);
    assert.equal(history[0].caller, 'node-test');

    const usage = await client.getUsage({ caller: 'node-test' });
    assert.equal(usage.callers.length, 1);
    assert.equal(usage.callers[0].caller, 'node-test');
    assert.equal(usage.callers[0].clicks, 2);
    assert.equal(usage.callers[0].cacheHits, 1);
  } finally {
    client.close();
  }
});

test('a batch larger than max_batch is split, keeps its order, and a bad item fails alone', async () => {
  const client = new VerdictClient(`127.0.0.1:${openPort}`, { caller: 'node-batch' });
  try {
    const before = await simRequests(simPort);
    const ips = ['1.1.1.1', 'not-an-ip', '9.9.9.9', '1.0.0.1', '10.0.0.1'];
    const results = await client.checkBatch(ips);
    assert.equal(results.length, ips.length);
    assert.equal(results[0].result.verdict.ip, '1.1.1.1');
    assert.equal(results[1].error.code, status.INVALID_ARGUMENT);
    assert.match(results[1].error.message, /not-an-ip/);
    assert.equal(results[2].result.verdict.ip, '9.9.9.9');
    assert.equal(results[3].result.verdict.ip, '1.0.0.1');
    assert.equal(results[4].error.code, status.FAILED_PRECONDITION, 'a private address');
    assert.equal(await simRequests(simPort) - before, 3);
  } finally {
    client.close();
  }
});

test('an invalid IP is INVALID_ARGUMENT with the server message', async () => {
  const client = new VerdictClient(`127.0.0.1:${openPort}`, { caller: 'node-test' });
  try {
    await assert.rejects(client.checkIp('999.1.1.1'), (err) => {
      assert.equal(err.code, status.INVALID_ARGUMENT);
      assert.match(err.details, /999\.1\.1\.1/);
      return true;
    });
  } finally {
    client.close();
  }
});

test('keyed mode over TLS: the right key is answered, a wrong one is UNAUTHENTICATED', async () => {
  const rootCerts = fs.readFileSync(path.join(pki, 'ca.pem'));
  const good = new VerdictClient(`127.0.0.1:${keyedTlsPort}`, { apiKey: GOOD_KEY, rootCerts });
  const wrong = new VerdictClient(`127.0.0.1:${keyedTlsPort}`, { apiKey: OTHER_KEY, rootCerts });
  try {
    const info = await good.getServerInfo();
    assert.equal(info.keyed, true);
    assert.equal(info.caller, 'node-team');
    await assert.rejects(wrong.getServerInfo(), (err) => err.code === status.UNAUTHENTICATED);
    // Plaintext to a TLS port fails too.
    const plain = new VerdictClient(`127.0.0.1:${keyedTlsPort}`, { apiKey: GOOD_KEY, deadlineMs: 2000 });
    await assert.rejects(plain.getServerInfo(), (err) => err.code === status.UNAVAILABLE ||
      err.code === status.DEADLINE_EXCEEDED);
    plain.close();
  } finally {
    good.close();
    wrong.close();
  }
});

test('a deadline shorter than a slow upstream is DEADLINE_EXCEEDED', async () => {
  const rootCerts = fs.readFileSync(path.join(pki, 'ca.pem'));
  const client = new VerdictClient(`127.0.0.1:${keyedTlsPort}`,
    { apiKey: GOOD_KEY, rootCerts, deadlineMs: 500 });
  try {
    const started = Date.now();
    await assert.rejects(client.checkIp('8.8.4.4'), (err) => err.code === status.DEADLINE_EXCEEDED);
    assert.ok(Date.now() - started < 2500, 'it gave up at the deadline, not the upstream');
  } finally {
    client.close();
  }
});

test('mutual TLS: answered with the client certificate, refused without it', async () => {
  const rootCerts = fs.readFileSync(path.join(pki, 'ca.pem'));
  const withCert = new VerdictClient(`127.0.0.1:${mtlsPort}`, {
    caller: 'node-mtls',
    rootCerts,
    privateKey: fs.readFileSync(path.join(pki, 'client.key')),
    certChain: fs.readFileSync(path.join(pki, 'client.pem')),
  });
  const without = new VerdictClient(`127.0.0.1:${mtlsPort}`,
    { caller: 'node-mtls', rootCerts, deadlineMs: 2000 });
  try {
    const response = await withCert.checkIp('1.0.0.2');
    assert.equal(response.source, 'SOURCE_UPSTREAM');
    assert.equal(response.verdict.caller, 'node-mtls');
    await assert.rejects(without.checkIp('1.0.0.3'), (err) => err.code === status.UNAVAILABLE);
  } finally {
    withCert.close();
    without.close();
  }
});
