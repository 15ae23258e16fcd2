#!/usr/bin/env node
'use strict';
// verdict-check HOST:PORT IP...   (VERDICT_API_KEY or VERDICT_CALLER from the environment)
const { VerdictClient } = require('./verdict_client');

async function main() {
  const [address, ...ips] = process.argv.slice(2);
  if (!address || ips.length === 0) {
    console.error('usage: example.js HOST:PORT IP...');
    process.exit(2);
  }
  const client = new VerdictClient(address, {
    apiKey: process.env.VERDICT_API_KEY,
    caller: process.env.VERDICT_CALLER || 'node-example',
  });
  try {
    const results = await client.checkBatch(ips);
    results.forEach((r, i) => {
      if (r.error) {
        console.log(`${ips[i]}\terror ${r.error.code}: ${r.error.message}`);
      } else {
        const v = r.result.verdict;
        console.log(`${v.ip}\t${v.score}\t${r.result.source}${r.result.clickSpent ? '\tclick spent' : ''}`);
      }
    });
  } catch (err) {
    console.error(`verdictd: ${err.code} ${err.details}`);
    process.exitCode = 1;
  } finally {
    client.close();
  }
}

main();
