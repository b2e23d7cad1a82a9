#!/usr/bin/env node
// Calls market.ratings.v1.Ratings/Get over xDS with Node.js's stock gRPC:
// @grpc/grpc-js with the @grpc/grpc-js-xds plugin (the versions pinned in
// package.json; `npm ci` in this directory installs them, tests/run.sh does).
//
// Usage: node tests/node/xds_client.js BOOTSTRAP TARGET
//
// BOOTSTRAP is a gRPC xDS bootstrap file (`registryctl xds-bootstrap`); it
// is given to grpc-js-xds as GRPC_XDS_BOOTSTRAP in this process only. TARGET
// is what to dial, e.g. xds:///ratings. The ratings contract is loaded at
// run time from proto/ with @grpc/proto-loader: no generated code.
//
// grpc-js-xds applies the route's `max_stream_duration` as the call's
// timeout (gRFC A31, "xDS Timeouts" in its README) since 1.4.0; unlike
// Python's grpcio (grpc/grpc#40633) it ends a call without a deadline of its
// own after that timeout, not before.
//
// The caller drives it on stdin, one command a line, and reads one JSON
// object a line on stdout, as with tests/python/xds_client.py:
//
//   calls N            N calls, each with a 5 s deadline; then a summary
//   window SECONDS     calls one after another for SECONDS; then a summary
//                      with, for each instance, when (in seconds from the
//                      window's start) it answered last
//   no-deadline        one call without a deadline of its own
//   quit               exit
//
// Every call prints {"served_by": ...} or {"code": ..., "details": ...},
// with "elapsed" (seconds). A summary is {"summary": COMMAND, "served":
// {...}, "last": {...}, "errors": {...}}. It prints {"started": TARGET,
// "connected": SECONDS} once the channel is connected (unlike the Python
// client, which prints it once the channel exists), or {"started": TARGET,
// "connected": null, "error": ...} when it could not connect within 10 s.
// It exits with 2 when called wrongly or the modules are missing.
'use strict';

const path = require('path');
const readline = require('readline');

const INSTALL = `npm ci --no-audit --no-fund (in ${__dirname})`;

// How long the channel may take to connect before the commands run anyway.
const CONNECT_TIMEOUT = 10;

function emit(value) {
  process.stdout.write(JSON.stringify(value) + '\n');
}

// Seconds since some fixed point, monotonic.
function now() {
  return Number(process.hrtime.bigint()) / 1e9;
}

function round(seconds) {
  return Math.round(seconds * 1000) / 1000;
}

async function main(argv) {
  if (argv.length !== 2) {
    console.error('usage: xds_client.js BOOTSTRAP TARGET');
    return 2;
  }
  const [bootstrap, target] = argv;
  // Read by grpc-js-xds when the first xds:/// channel is made.
  process.env.GRPC_XDS_BOOTSTRAP = bootstrap;
  let grpc, xds, protoLoader;
  try {
    grpc = require('@grpc/grpc-js');
    xds = require('@grpc/grpc-js-xds');
    protoLoader = require('@grpc/proto-loader');
  } catch (error) {
    console.error(`cannot load the gRPC modules (${error.message}); ${INSTALL}`);
    return 2;
  }
  // Registers the xds: scheme (its resolver) and the xDS LB policies.
  xds.register();

  // The contract imports market/policy/v1/policy.proto (its client_policy
  // option) and google/protobuf/*.proto, which proto-loader bundles.
  const protoDir = path.join(__dirname, '..', '..', 'proto');
  const definition = protoLoader.loadSync('market/ratings/v1/ratings.proto', {
    includeDirs: [protoDir],
    keepCase: true,
  });
  const { Ratings } = grpc.loadPackageDefinition(definition).market.ratings.v1;
  const client = new Ratings(target, grpc.credentials.createInsecure());
  // Connects the channel first (xDS resolved: listener, cluster and
  // endpoints; and an instance connected), so that a call's time is its
  // own: a first call would also wait for grpc-js-xds's start (0.3 to
  // 0.6 s), and the route's timeout only starts once the channel has its
  // config.
  const connecting = now();
  const connected = await new Promise((resolve) => {
    client.waitForReady(Date.now() + CONNECT_TIMEOUT * 1000, (error) => resolve(error));
  });
  emit(
    connected
      ? { started: target, connected: null, error: connected.message }
      : { started: target, connected: round(now() - connecting) },
  );

  // One call; `timeout` in seconds, or null for no deadline of its own (the
  // route's max_stream_duration then bounds it).
  function call(timeout) {
    const options = timeout === null ? {} : { deadline: new Date(Date.now() + timeout * 1000) };
    const started = now();
    return new Promise((resolve) => {
      client.Get({ thing_id: 'camera' }, options, (error, rating) => {
        const result = error
          ? { code: grpc.status[error.code], details: error.details }
          : { served_by: rating.served_by };
        result.elapsed = round(now() - started);
        emit(result);
        resolve(result);
      });
    });
  }

  function summary(command, results, started) {
    const served = {}, last = {}, errors = {};
    for (const [at, result] of results) {
      if ('served_by' in result) {
        served[result.served_by] = (served[result.served_by] || 0) + 1;
        last[result.served_by] = round(at - started);
      } else {
        errors[result.code] = (errors[result.code] || 0) + 1;
      }
    }
    emit({ summary: command, served, last, errors });
  }

  // Commands one after another: the next line is read once one is done.
  const lines = readline.createInterface({ input: process.stdin, terminal: false });
  for await (const line of lines) {
    const words = line.trim().split(/\s+/).filter((w) => w);
    if (words.length === 0) continue;
    const command = words[0];
    if (command === 'quit') break;
    if (command === 'calls') {
      const started = now();
      const results = [];
      for (let i = 0; i < Number(words[1]); i++) {
        const result = await call(5);
        results.push([now(), result]);
      }
      summary(command, results, started);
    } else if (command === 'window') {
      const seconds = Number(words[1]);
      const started = now();
      const results = [];
      while (now() - started < seconds) {
        const result = await call(5);
        results.push([now(), result]);
      }
      summary(command, results, started);
    } else if (command === 'no-deadline') {
      await call(null);
    } else {
      emit({ error: `unknown command ${JSON.stringify(command)}` });
    }
  }
  client.close();
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
