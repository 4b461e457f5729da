'use strict';
// Preloaded into the NNI manager (a Node.js process) by nni_lease.runtime.manager through
// NODE_OPTIONS="--require <this file>". It does two things NNI 3.0 has no option for:
//
// 1. Bind. Every TCP listen() that names no host, or a wildcard host ('', 0.0.0.0, ::), binds to
//    NNI_LEASE_MANAGER_HOST instead (127.0.0.1 by default). NNI's REST server and web UI call
//    app.listen(port); the reuse-mode command channel creates ws.Server({port: port + 1}); both end up
//    in net.Server.prototype.listen, in one of its call forms, which are all handled here:
//    listen(port[, host][, backlog][, cb]), listen(options[, cb]), listen([cb]). Pipes (a path) and
//    existing handles are passed through untouched; an explicit specific host is kept.
// 2. Answer only its own origin. Every HTTP request and websocket upgrade any http.Server of this
//    process receives is checked before NNI sees it, and refused with 403 when
//    - its Host header is not `localhost:PORT` or `<IP literal>:PORT` (PORT: the port the connection came
//      in on). A web page can only reach the manager under a name that resolves to this machine (DNS
//      rebinding): its requests carry that name as Host. A browser sends an IP literal as Host only for a
//      page whose own origin is that address, i.e. the manager itself. Names listed in
//      NNI_LEASE_MANAGER_ALLOWED_NAMES (comma-separated; e.g. an nniManagerIp given as a name) are allowed too;
//    - it carries an Origin that is not `http://<its Host>` (any method: a cross-origin fetch, a
//      cross-site websocket, `Origin: null` from a sandboxed page or file:);
//    - it changes state (POST, PUT, DELETE, PATCH) without an Origin but with a Referer from another
//      origin. Browsers send Origin on every request that is not GET or HEAD (Fetch standard,
//      "append a request Origin header"), a text/plain form POST included, so a state-changing request
//      with neither header comes from a program, not a page: NNI's Python client, its trials and remote
//      workers send none and keep working.
// 3. Die with the launcher. NNI starts this process in its own process group, so it outlives a
//    SIGKILLed launcher. A watchdog notices when the parent process (NNI_LEASE_MANAGER_PARENT) is gone,
//    asks NNI to shut down (SIGTERM: the experiment stops and the trials are killed), and after
//    NNI_LEASE_MANAGER_GRACE_MS kills what is left of its process group (itself and its trials).
//
// Nothing happens when the variables are absent, and they (and this --require) are removed from the
// environment so that the trials and any other child do not inherit them.

const net = require('net');
const http = require('http');
const { isMainThread } = require('worker_threads');

const HOST = process.env.NNI_LEASE_MANAGER_HOST;
const PARENT = Number(process.env.NNI_LEASE_MANAGER_PARENT);
const GRACE_MS = Number(process.env.NNI_LEASE_MANAGER_GRACE_MS) || 10000;
const POLL_MS = 500;
const ALLOWED_NAMES = new Set(['localhost', ...(process.env.NNI_LEASE_MANAGER_ALLOWED_NAMES || '')
  .split(',').map(name => name.trim().toLowerCase()).filter(name => name)]);
const STATE_CHANGING = new Set(['POST', 'PUT', 'DELETE', 'PATCH']);
const WILDCARD_HOSTS = new Set(['', '0.0.0.0', '::', '::0', '0:0:0:0:0:0:0:0']);

function scrubEnvironment() {
  for (const name of ['NNI_LEASE_MANAGER_HOST', 'NNI_LEASE_MANAGER_PARENT', 'NNI_LEASE_MANAGER_GRACE_MS',
                      'NNI_LEASE_MANAGER_ALLOWED_NAMES']) {
    delete process.env[name];
  }
  const options = process.env.NODE_OPTIONS;
  if (options !== undefined) {
    // Remove the `--require "<this file>"` that nni_lease.runtime.manager put first.
    const quoted = JSON.stringify(__filename);
    const rest = options.split(`--require ${quoted}`).join('').trim();
    if (rest) {
      process.env.NODE_OPTIONS = rest;
    } else {
      delete process.env.NODE_OPTIONS;
    }
  }
}

// Node's own reading of a port argument: a number >= 0, or a string that is one; anything else is a
// pipe name (see lib/net.js, toNumber / isPipeName).
function toNumber(value) {
  const number = Number(value);
  return number >= 0 ? number : false;
}

function bindHost(requested) {
  return requested === undefined || requested === null || WILDCARD_HOSTS.has(requested) ? HOST : requested;
}

function patchListen() {
  const originalListen = net.Server.prototype.listen;
  net.Server.prototype.listen = function listen(...args) {
    const callback = typeof args[args.length - 1] === 'function' ? args.pop() : undefined;
    const first = args[0];
    let options = null;
    if (first !== null && typeof first === 'object') {
      const isHandle = first._handle !== undefined || first.handle !== undefined || first.fd !== undefined;
      if (!isHandle && first.path === undefined) {
        options = { ...first };
      }
    } else if (first === undefined || first === null || typeof first === 'number'
               || (typeof first === 'string' && toNumber(first) !== false)) {
      options = { port: first === undefined || first === null ? 0 : first };
      if (typeof args[1] === 'string') {
        options.host = args[1];
      }
      const backlog = toNumber(args.length > 1 && args[1]) || toNumber(args.length > 2 && args[2]);
      if (backlog) {
        options.backlog = backlog;
      }
    }
    if (options === null) {  // a pipe or an existing handle: nothing to bind
      return originalListen.apply(this, callback ? [...args, callback] : args);
    }
    options.host = bindHost(options.host);
    return callback ? originalListen.call(this, options, callback) : originalListen.call(this, options);
  };
}

// The hostname and port of a Host header (`name:port`, `[v6]:port`), lower-cased; null if malformed.
function splitHost(value) {
  const match = /^(\[[0-9a-f:.]+\]|[^:\[\]]+)(?::(\d{1,5}))?$/i.exec(value);
  return match ? { name: match[1].toLowerCase(), port: match[2] === undefined ? 80 : Number(match[2]) } : null;
}

function isIpLiteral(name) {
  return net.isIPv4(name) || (name.startsWith('[') && name.endsWith(']') && net.isIPv6(name.slice(1, -1)));
}

function originOf(url) {
  try {
    return new URL(url).origin.toLowerCase();
  } catch (error) {
    return null;
  }
}

// Why `req` must be refused, or null if it may reach NNI.
function refusal(req) {
  const hostHeader = req.headers.host;
  const host = typeof hostHeader === 'string' ? splitHost(hostHeader.trim()) : null;
  if (host === null) {
    return 'no valid Host header';
  }
  if (host.port !== req.socket.localPort || !(ALLOWED_NAMES.has(host.name) || isIpLiteral(host.name))) {
    return `Host ${JSON.stringify(hostHeader.slice(0, 100))} is not this manager (localhost or an IP address, `
           + `port ${req.socket.localPort})`;
  }
  const own = `http://${host.name}:${host.port}`;
  const ownDefault = host.port === 80 ? `http://${host.name}` : own;
  const origin = req.headers.origin;
  if (origin !== undefined) {
    const seen = originOf(origin);
    if (seen !== own && seen !== ownDefault) {
      return `Origin ${JSON.stringify(String(origin).slice(0, 100))} is not this manager's origin ${own}`;
    }
  } else if (STATE_CHANGING.has(req.method) && req.headers.referer !== undefined) {
    const seen = originOf(req.headers.referer);
    if (seen !== own && seen !== ownDefault) {
      return `Referer of a ${req.method} request is not from this manager's origin ${own}`;
    }
  }
  return null;
}

function patchRequests() {
  const originalEmit = http.Server.prototype.emit;
  http.Server.prototype.emit = function emit(event, ...args) {
    if (event === 'request' || event === 'upgrade') {
      const req = args[0];
      const why = refusal(req);
      if (why !== null) {
        process.stderr.write(`nni_lease: refused ${req.method} ${String(req.url).slice(0, 200)}: ${why}.\n`);
        const body = `Forbidden: ${why}.\n`;
        if (event === 'request') {
          const res = args[1];
          res.writeHead(403, { 'Content-Type': 'text/plain; charset=utf-8', 'Connection': 'close' });
          res.end(body);
        } else {
          const socket = args[1];
          socket.end(`HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\n`
                     + `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
        }
        return true;
      }
    }
    return originalEmit.call(this, event, ...args);
  };
}

function leadsItsProcessGroup() {
  try {
    process.kill(-process.pid, 0);
    return true;
  } catch (error) {
    return false;
  }
}

function startWatchdog() {
  const parent = process.ppid;
  const groupLeader = leadsItsProcessGroup();
  let orphaned = false;

  function killGroup() {
    if (groupLeader) {
      try {
        process.kill(-process.pid, 'SIGKILL');  // this process and the trials it started
      } catch (error) {
        // nothing left to kill
      }
    }
    process.exit(1);
  }

  process.on('exit', () => {
    if (orphaned && groupLeader) {
      try {
        process.kill(-process.pid, 'SIGKILL');  // trials NNI's shutdown did not end
      } catch (error) {
        // nothing left to kill
      }
    }
  });

  // Started directly by the launcher (the usual case): the parent pid changes once the launcher is
  // gone, which no later process can undo. Otherwise poll the launcher's pid.
  const direct = parent === PARENT;
  function launcherAlive() {
    if (direct) {
      return process.ppid === PARENT;
    }
    try {
      process.kill(PARENT, 0);
      return true;
    } catch (error) {
      return error.code !== 'ESRCH';
    }
  }

  const timer = setInterval(() => {
    if (launcherAlive()) {
      return;
    }
    orphaned = true;
    clearInterval(timer);
    process.stderr.write(`nni_lease: the process that started this NNI manager (pid ${PARENT}) is gone; `
                         + 'stopping the experiment and its trials.\n');
    setTimeout(killGroup, GRACE_MS);
    process.kill(process.pid, 'SIGTERM');  // NNI's graceful shutdown: stops trials, closes its ports
  }, POLL_MS);
  timer.unref();
}

if (HOST !== undefined) {
  scrubEnvironment();
  patchListen();
  patchRequests();
  if (isMainThread && Number.isInteger(PARENT) && PARENT > 0) {
    startWatchdog();
  }
}
