// Routed RPC through deepstream, for flowhub-bench (the rpc scenario): P providers echo each
// call's data; one caller keeps C calls in flight (closed loop: each answer sends the next
// call). A warm-up, then a measurement window: calls completed in it are counted and their
// latency recorded; the server's CPU time (utime+stime of /proc/<pid>/stat) is read at the
// window's first and last completion.
//
// usage: node deepstream-rpc.js URL SERVER_PID PROVIDERS IN_FLIGHT WARMUP_MS WINDOW_MS CLK_TCK PAYLOAD_JSON
// prints one JSON line: {"ops","secs","cpu","errors","lat":[[microseconds, count], ...]}
const fs = require('fs');
const { DeepstreamClient } = require('@deepstream/client');

const [url, pid, P, C, warmMs, winMs, tck, payloadJson] = process.argv.slice(2);
const providers = +P, inFlight = +C, ticks = +tck || 100;
const payload = JSON.parse(payloadJson);
const NAME = 'bench/echo';

function cpu() {
  const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return (+f[11] + +f[12]) / ticks;
}
function login(c) {
  return new Promise((res, rej) => c.login({}, (ok) => (ok ? res() : rej(new Error('login failed')))));
}
function call(c) {
  return new Promise((res, rej) => c.rpc.make(NAME, payload, (err, r) => (err ? rej(new Error(String(err))) : res(r))));
}
const nowUs = () => Number(process.hrtime.bigint() / 1000n);
// Latencies kept to 3 significant digits, as the bench's HDR histograms keep them.
function bucket(us) {
  let scale = 1;
  while (us >= 1000 * scale) scale *= 10;
  return Math.round(us / scale) * scale;
}

(async () => {
  // Stop by itself if something hangs.
  setTimeout(() => { console.error('deepstream-rpc: timed out'); process.exit(3); }, +warmMs + +winMs + 60000).unref();
  const clients = [];
  for (let i = 0; i < providers; i++) {
    const p = new DeepstreamClient(url);
    await login(p);
    p.rpc.provide(NAME, (data, response) => response.send(data));
    clients.push(p);
  }
  const caller = new DeepstreamClient(url);
  await login(caller);
  // The providers are registered once a call is answered; it must echo the payload.
  let first;
  for (let tries = 0; ; tries++) {
    try { first = await call(caller); break; } catch (e) {
      if (tries > 50) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  if (JSON.stringify(first) !== JSON.stringify(payload)) throw new Error('echo differs: ' + JSON.stringify(first));

  const start = nowUs() + +warmMs * 1000, end = start + +winMs * 1000;
  let cpu0 = null, cpu1 = null, t0 = 0, t1 = 0, ops = 0, errors = 0, outstanding = 0;
  const lat = new Map();
  await new Promise((resolve) => {
    function one() {
      outstanding++;
      const began = nowUs();
      caller.rpc.make(NAME, payload, (err) => {
        const t = nowUs();
        outstanding--;
        if (err) errors++;
        if (t >= start && cpu0 === null) { cpu0 = cpu(); t0 = t; }
        if (t >= end && cpu1 === null) { cpu1 = cpu(); t1 = t; }
        if (cpu0 !== null && cpu1 === null && !err) {
          ops++;
          const us = bucket(Math.max(1, t - began));
          lat.set(us, (lat.get(us) || 0) + 1);
        }
        if (t < end) one(); else if (outstanding === 0) resolve();
      });
    }
    for (let i = 0; i < inFlight; i++) one();
  });
  // Written synchronously: process.exit would cut an asynchronous write to a pipe short.
  fs.writeSync(1, JSON.stringify({ ops, secs: (t1 - t0) / 1e6, cpu: cpu1 - cpu0, errors, lat: [...lat.entries()] }) + '\n');
  process.exit(0);
})().catch((e) => { console.error('deepstream-rpc: ' + (e && e.message)); process.exit(2); });
