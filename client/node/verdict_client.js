'use strict';
// A small Node.js client for verdictd, on @grpc/grpc-js with @grpc/proto-loader: the messages
// are loaded from proto/verdict/v1/verdict.proto when the client is made (no generated code is
// committed; Node's convention with proto-loader). Field names are camelCase (clickSpent),
// enums are their names ('SOURCE_CACHE'), int64 counters are Numbers, Timestamps are
// {seconds, nanos}.
//
// Every call has a deadline (options.deadlineMs, default 10 s). Errors reject with grpc-js's
// ServiceError: err.code is a grpc.status value, err.details the server's message. Nothing is
// retried: a CheckIp or CheckBatch that failed may still have spent a click (the request may
// have reached ClickPatrol), and a retry could spend another.

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const DEFAULT_PROTO = path.join(__dirname, '..', '..', 'proto', 'verdict', 'v1', 'verdict.proto');

function loadService(protoPath) {
  const definition = protoLoader.loadSync(protoPath, {
    keepCase: false,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
    includeDirs: [path.dirname(path.dirname(path.dirname(protoPath)))],
  });
  return grpc.loadPackageDefinition(definition).verdict.v1.VerdictService;
}

class VerdictClient {
  // address: "host:port". options:
  //   apiKey      sent as `authorization: Bearer <key>` (keyed mode); or
  //   caller      sent as `x-caller` (open mode)
  //   rootCerts   Buffer of PEM CA certificates: TLS (else plaintext)
  //   privateKey, certChain  Buffers of PEM: a client certificate for mutual TLS
  //   serverName  the name the server's certificate must carry (default: the host)
  //   deadlineMs  default deadline of every call (default 10000)
  //   protoPath   verdict.proto (default: the repository's)
  constructor(address, options = {}) {
    const Service = loadService(options.protoPath || DEFAULT_PROTO);
    const credentials = options.rootCerts
      ? grpc.credentials.createSsl(options.rootCerts, options.privateKey || null,
        options.certChain || null)
      : grpc.credentials.createInsecure();
    const channelOptions = {};
    if (options.serverName) {
      channelOptions['grpc.ssl_target_name_override'] = options.serverName;
      channelOptions['grpc.default_authority'] = options.serverName;
    }
    this._stub = new Service(address, credentials, channelOptions);
    this._metadata = new grpc.Metadata();
    if (options.apiKey) {
      this._metadata.set('authorization', `Bearer ${options.apiKey}`);
    } else if (options.caller) {
      this._metadata.set('x-caller', options.caller);
    }
    this._deadlineMs = options.deadlineMs || 10000;
    this._maxBatch = null;
  }

  _call(method, request, deadlineMs) {
    const deadline = new Date(Date.now() + (deadlineMs || this._deadlineMs));
    return new Promise((resolve, reject) => {
      this._stub[method](request, this._metadata.clone(), { deadline }, (err, response) => {
        if (err) {
          reject(err);
        } else {
          resolve(response);
        }
      });
    });
  }

  // One IP. options: userAgent, maxAgeSeconds, cacheOnly, deadlineMs.
  checkIp(ip, options = {}) {
    return this._call('checkIp', checkIpRequest(ip, options), options.deadlineMs);
  }

  getServerInfo(options = {}) {
    return this._call('getServerInfo', {}, options.deadlineMs);
  }

  // Many IPs (strings, or {ip, userAgent, maxAgeSeconds, cacheOnly}), split into CheckBatch calls
  // of at most the server's max_batch (asked once), sent one after another. Resolves to the
  // results in input order: each {result: CheckIpResponse} or {error: {code, message}}.
  async checkBatch(items, options = {}) {
    if (this._maxBatch === null) {
      const info = await this.getServerInfo(options);
      this._maxBatch = info.maxBatch > 0 ? info.maxBatch : 1000;
    }
    const requests = items.map((item) =>
      (typeof item === 'string' ? checkIpRequest(item, {}) : checkIpRequest(item.ip, item)));
    const results = [];
    for (let i = 0; i < requests.length; i += this._maxBatch) {
      const chunk = requests.slice(i, i + this._maxBatch);
      const response = await this._call('checkBatch', { items: chunk }, options.deadlineMs);
      for (const r of response.results) {
        results.push(r.outcome === 'error' ? { error: r.error } : { result: r.result });
      }
    }
    return results;
  }

  // Every stored verdict for ip, newest first, following page tokens. options: since, until
  // (Dates), pageSize, deadlineMs (per page).
  async listVerdictHistory(ip, options = {}) {
    const verdicts = [];
    let pageToken = '';
    do {
      const request = { ip, pageSize: options.pageSize || 0, pageToken };
      if (options.since) request.since = timestamp(options.since);
      if (options.until) request.until = timestamp(options.until);
      const page = await this._call('listVerdictHistory', request, options.deadlineMs);
      verdicts.push(...page.verdicts);
      pageToken = page.nextPageToken;
    } while (pageToken);
    return verdicts;
  }

  // options: caller ('' = every caller: open mode and auditors only), since, until (Dates),
  // deadlineMs.
  getUsage(options = {}) {
    const request = { caller: options.caller || '' };
    if (options.since) request.since = timestamp(options.since);
    if (options.until) request.until = timestamp(options.until);
    return this._call('getUsage', request, options.deadlineMs);
  }

  close() {
    this._stub.close();
  }
}

function checkIpRequest(ip, options) {
  const request = { ip, userAgent: options.userAgent || '', cacheOnly: !!options.cacheOnly };
  if (options.maxAgeSeconds !== undefined) {
    request.maxAge = { seconds: Math.floor(options.maxAgeSeconds), nanos: 0 };
  }
  return request;
}

function timestamp(date) {
  const ms = date.getTime();
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
}

module.exports = { VerdictClient, status: grpc.status };
